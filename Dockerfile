# Image of the Collectors worker and API. docker-compose.yml runs it as `collectors worker`
# and `collectors api`.
#
# The first stage builds the package's wheel with the C extension agents._stage_one,
# since the slim image has no C compiler.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY app ./app
COPY agents ./agents
COPY rules ./rules
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

# The processes run as an unprivileged user. /var/lib/collectors is the working directory,
# where Faust keeps its data folder, and secret/ is the mount point of the volume that
# shares the credential-encryption secret between the worker and the API.
RUN useradd --system --uid 10001 --home-dir /var/lib/collectors --create-home collectors \
    && mkdir -p /var/lib/collectors/secret \
    && chown -R collectors:collectors /var/lib/collectors
USER collectors
WORKDIR /var/lib/collectors
ENV COLLECTORS_SECRET_KEY_FILE=/var/lib/collectors/secret/secret.key

# REST and dashboard, gRPC, and the worker's health and metrics server.
EXPOSE 8080 18080 6066
CMD ["collectors", "api"]
