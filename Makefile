# Developer entry points. Kafka and Redis run as local processes started by
# scripts/services.sh, so no Docker engine is needed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
SERVICES := scripts/services.sh
SERVICES_DATA_DIR ?= $(CURDIR)/.data/services
# Extra pytest options, for example: make test PYTEST_ARGS='-x -k redis'
PYTEST_ARGS ?=
# Written after a successful pip install, so that the install step reruns only when
# pyproject.toml, setup.py or the C extension changes (the package is installed in
# editable mode, with agents/_stage_one.c built in place).
INSTALL_STAMP := $(VENV)/.install-stamp
# Clarifai's Node.js and Java clients, which tests/test_api_guide_clients.py runs. Each
# stamp is written after its install, which reruns when the lock file or pom changes.
NODE_CLIENT := tests/clients/node
NODE_CLIENT_STAMP := $(NODE_CLIENT)/node_modules/.install-stamp
JAVA_CLIENT := tests/clients/java
JAVA_CLIENT_STAMP := $(JAVA_CLIENT)/target/dependency/.install-stamp

.PHONY: install install-service install-services up down status test demo bench lint clean-data

# What the service itself needs (make demo, make bench), then the clients that only the
# tests run.
install: install-service $(NODE_CLIENT_STAMP) $(JAVA_CLIENT_STAMP)

install-service: $(INSTALL_STAMP) install-services

install-services:
	$(SERVICES) install

$(INSTALL_STAMP): pyproject.toml setup.py agents/_stage_one.c
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -e '.[dev]'
	touch $@

# npm ci installs the exact versions in package-lock.json. The only install scripts in
# that tree are the postinstall scripts of the two protobufjs copies, which prepare
# protobufjs's command-line tool and are not needed here.
$(NODE_CLIENT_STAMP): $(NODE_CLIENT)/package-lock.json $(NODE_CLIENT)/package.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 18 or newer with npm (Debian: apt-get install nodejs npm), then rerun make install" >&2; exit 1; }
	cd $(NODE_CLIENT) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# Copies the Java client and its dependencies into target/dependency, dropping the jars
# of an earlier pom. The test compiles the example class with javac, so it needs a JDK.
$(JAVA_CLIENT_STAMP): $(JAVA_CLIENT)/pom.xml | install-services
	@command -v mvn >/dev/null || { echo "mvn not found: install Maven (Debian: apt-get install maven), then rerun make install" >&2; exit 1; }
	rm -rf $(JAVA_CLIENT)/target/dependency
	cd $(JAVA_CLIENT) && mvn -q -B -Dstyle.color=never dependency:copy-dependencies
	touch $@

up:
	$(SERVICES) up

down:
	$(SERVICES) down

status:
	$(SERVICES) status

# The test set-up also starts the services it needs, but starting them here first keeps a
# failed start out of the test report.
test: install
	@# The dashboard tests render the page in Debian's chromium; install it when
	@# missing and apt-get is usable (they are skipped without it outside CI).
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "could not install chromium; the dashboard's browser tests will be skipped"
	$(SERVICES) up
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

demo: install-service
	$(SERVICES) up
	$(VENV_PYTHON) -m app.demo

# The benchmark starts Kafka and Redis itself when they are not running, and stops
# only what it started. BENCH_ARGS passes options, for example BENCH_ARGS=--quick.
BENCH_ARGS ?=
bench: install-service
	$(VENV_PYTHON) -m bench $(BENCH_ARGS)

lint:
	@if $(VENV_PYTHON) -m ruff --version >/dev/null 2>&1; then \
		ruff="$(VENV_PYTHON) -m ruff"; \
	elif command -v ruff >/dev/null; then \
		ruff=ruff; \
	else \
		echo "ruff is not installed, so Python lint is skipped (install it with pip)."; \
		ruff=; \
	fi; \
	if [ -n "$$ruff" ]; then $$ruff check . && $$ruff format --check .; fi
	@if command -v shellcheck >/dev/null; then shellcheck scripts/services.sh .ci/run; fi

# Stops every instance that services.sh started under SERVICES_DATA_DIR, including the
# private ones of tests on other ports, then deletes their data.
clean-data:
	@shopt -s nullglob; \
	for dir in "$(SERVICES_DATA_DIR)"/kafka-*/; do \
		port=$${dir%/}; port=$${port##*-}; \
		SERVICES_DATA_DIR="$(SERVICES_DATA_DIR)" SERVICES_ONLY=kafka KAFKA_PORT=$$port $(SERVICES) down; \
	done; \
	for dir in "$(SERVICES_DATA_DIR)"/redis-*/; do \
		port=$${dir%/}; port=$${port##*-}; \
		SERVICES_DATA_DIR="$(SERVICES_DATA_DIR)" SERVICES_ONLY=redis REDIS_PORT=$$port $(SERVICES) down; \
	done
	rm -rf "$(SERVICES_DATA_DIR)"
