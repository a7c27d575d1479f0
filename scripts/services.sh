#!/usr/bin/env bash
# Install, start, stop and check the local Kafka broker and Redis server without Docker.
#
# Usage: scripts/services.sh install|up|down|status
#
#   install  install what is missing: redis-server (apt), Java 17+ (apt), and the Kafka
#            jars (Maven, from services/kafka/pom.xml). Fast when nothing is missing.
#   up       run install, start each service whose port does not accept connections yet,
#            and wait until both are ready (Redis replies to PING, Kafka returns metadata
#            and a group coordinator). A port that already accepts connections is left
#            alone.
#   down     stop the processes that `up` started for these ports (found by pid file).
#            Data stays in place.
#   status   print whether each port accepts connections. Exits 1 when one does not.
#
# Environment (default in brackets):
#   KAFKA_PORT              Kafka client port [9092]
#   KAFKA_CONTROLLER_PORT   KRaft controller port [KAFKA_PORT + 1]
#   REDIS_PORT              Redis port [6379]
#   SERVICES_DATA_DIR       data, logs and pid files [<repo>/.data/services]. Each instance
#                           has its own folder, kafka-<KAFKA_PORT> or redis-<REDIS_PORT>.
#   SERVICES_ONLY           kafka or redis to manage only that service [both]
#   SERVICES_READY_TIMEOUT  seconds `up` waits for each service to become ready [90]
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
KAFKA_HOME=$REPO_DIR/services/kafka
VENV_PYTHON=$REPO_DIR/.venv/bin/python

KAFKA_PORT=${KAFKA_PORT:-9092}
REDIS_PORT=${REDIS_PORT:-6379}
SERVICES_DATA_DIR=${SERVICES_DATA_DIR:-$REPO_DIR/.data/services}
SERVICES_ONLY=${SERVICES_ONLY:-}
READY_TIMEOUT=${SERVICES_READY_TIMEOUT:-90}
STOP_TIMEOUT=30
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

# The JVM options of Kafka's bin/kafka-run-class.sh (without -XX:MaxInlineLevel=15, the
# default since JDK 14), with a heap of at most 512 MiB.
KAFKA_JVM_OPTS=(
  -Xms256m -Xmx512m
  -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent
  -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$KAFKA_HOME/log4j2.properties"
)

# File descriptors of the per-instance locks that `up` and `down` hold. Background
# processes started under a lock must close them, or they would hold the lock forever.
REDIS_LOCK_FD=8
KAFKA_LOCK_FD=9

log() { printf '%s\n' "$*"; }

die() {
  printf 'services.sh: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

validate_port() {
  local name=$1 value=$2
  if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
    die "invalid $name '$value': expected a TCP port number from 1 to 65535"
  fi
}

validate_settings() {
  validate_port KAFKA_PORT "$KAFKA_PORT"
  KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
  validate_port KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
  validate_port REDIS_PORT "$REDIS_PORT"
  if ((KAFKA_PORT == KAFKA_CONTROLLER_PORT)); then
    die "KAFKA_PORT and KAFKA_CONTROLLER_PORT are both $KAFKA_PORT: they must differ"
  fi
  if ((KAFKA_PORT == REDIS_PORT || KAFKA_CONTROLLER_PORT == REDIS_PORT)); then
    die "REDIS_PORT $REDIS_PORT is also a Kafka port: choose another port"
  fi
  case $SERVICES_ONLY in
    '' | kafka | redis) ;;
    *) die "invalid SERVICES_ONLY '$SERVICES_ONLY': expected kafka, redis or nothing" ;;
  esac
  if ! [[ $READY_TIMEOUT =~ ^[0-9]+$ ]]; then
    die "invalid SERVICES_READY_TIMEOUT '$READY_TIMEOUT': expected a number of seconds"
  fi
  # Kafka reads log.dirs relative to its working directory, so make the path absolute.
  if [[ $SERVICES_DATA_DIR != /* ]]; then
    SERVICES_DATA_DIR=$PWD/$SERVICES_DATA_DIR
  fi
  KAFKA_INSTANCE_DIR=$SERVICES_DATA_DIR/kafka-$KAFKA_PORT
  REDIS_INSTANCE_DIR=$SERVICES_DATA_DIR/redis-$REDIS_PORT
}

manages() { [[ -z $SERVICES_ONLY || $SERVICES_ONLY == "$1" ]]; }

# Succeed when something accepts TCP connections on 127.0.0.1:<port>.
port_open() {
  # shellcheck disable=SC2016 # $1 expands in the inner shell.
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Print the pid stored in <file> when that process is alive and its command line contains
# <pattern>, so that a pid reused by an unrelated process is never signalled.
live_pid_from_file() {
  local file=$1 pattern=$2 pid command_line
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  command_line=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $command_line == *"$pattern"* ]] || return 1
  printf '%s\n' "$pid"
}

print_log_tail() {
  local file=$1
  if [[ -s $file ]]; then
    log "---- last 40 lines of $file ----"
    tail -n 40 "$file"
    log "---- end of $file ----"
  fi
}

# ---------------------------------------------------------------------------------------
# install

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "'$*' needs root: run it as root or install sudo"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null ||
    die "apt-get not found: install $* with this system's package manager, then retry"
  log "Installing $* with apt-get ..."
  if ((APT_UPDATED == 0)); then
    as_root apt-get update -q
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

install_redis() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    return 0
  fi
  local default_port_was_open=0
  port_open 6379 && default_port_was_open=1
  apt_install redis-server
  # Debian's package starts its own Redis on 6379 (without appendonly) unless policy-rc.d
  # forbids it. Stop and disable that one, so that `up` starts Redis with this project's
  # settings.
  if ((default_port_was_open == 0)) && port_open 6379; then
    log "Stopping the redis-server system service that the package started ..."
    if [[ -d /run/systemd/system ]]; then
      as_root systemctl disable --now redis-server || true
    else
      as_root service redis-server stop || true
    fi
  fi
}

java_major_version() {
  local version
  version=$("$JAVA" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = //p')
  # Java 8 and older report 1.<major>.
  version=${version#1.}
  printf '%s\n' "${version%%.*}"
}

install_java() {
  if ! command -v "$JAVA" >/dev/null; then
    apt_install default-jre-headless
  fi
  local major
  major=$(java_major_version)
  if ! [[ $major =~ ^[0-9]+$ ]] || ((major < 17)); then
    die "Kafka 4 needs Java 17 or newer, but $JAVA reports version '$major':" \
      "install openjdk-17-jre-headless (or newer) and put it first on PATH or in JAVA_HOME"
  fi
}

kafka_version() {
  sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$KAFKA_HOME/pom.xml"
}

install_kafka() {
  install_java
  local version
  version=$(kafka_version)
  [[ -n $version ]] || die "no <kafka.version> property found in $KAFKA_HOME/pom.xml"
  [[ -f $KAFKA_HOME/libs/kafka_2.13-$version.jar ]] && return 0

  command -v mvn >/dev/null || apt_install maven
  log "Fetching Kafka $version and its dependencies with Maven into $KAFKA_HOME/libs ..."
  # Fetch into a separate folder first, so that an interrupted download never leaves a
  # libs/ that looks complete, and jars of another Kafka version are dropped.
  rm -rf "$KAFKA_HOME/libs.partial"
  (cd "$KAFKA_HOME" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory=libs.partial)
  [[ -f $KAFKA_HOME/libs.partial/kafka_2.13-$version.jar ]] ||
    die "Maven finished but $KAFKA_HOME/libs.partial/kafka_2.13-$version.jar is missing"
  rm -rf "$KAFKA_HOME/libs"
  mv "$KAFKA_HOME/libs.partial" "$KAFKA_HOME/libs"
}

cmd_install() {
  mkdir -p "$SERVICES_DATA_DIR"
  # Concurrent runs (parallel test fixtures, for example) would otherwise both run
  # apt-get or Maven.
  exec 7>"$SERVICES_DATA_DIR/.install.lock"
  flock -w 600 7 || die "timed out after 600 s waiting for another install to finish"
  if manages redis; then install_redis; fi
  if manages kafka; then install_kafka; fi
  exec 7>&-
}

# ---------------------------------------------------------------------------------------
# Kafka

kafka_pid_pattern() { printf 'kafka.Kafka %s' "$KAFKA_INSTANCE_DIR/server.properties"; }

kafka_java() {
  "$JAVA" "${KAFKA_JVM_OPTS[@]}" "-Dkafka.logs.dir=$KAFKA_INSTANCE_DIR/logs" \
    -cp "$KAFKA_HOME/libs/*" "$@"
}

# Escape a value for the replacement part of a sed s|...|...| command.
sed_replacement() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

render_kafka_properties() {
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@KAFKA_LOG_DIR@|$(sed_replacement "$KAFKA_INSTANCE_DIR/data")|g" \
    "$KAFKA_HOME/server.properties.template"
}

# Print a new cluster id: 16 random bytes in URL-safe base64 without padding, which is
# the format of Kafka's Uuid. An id starting with "-" would parse as an option.
new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    [[ $id == -* ]] || break
  done
  printf '%s\n' "$id"
}

# Start Kafka unless its port already accepts connections or a broker that `up` started
# is still starting. wait_for_kafka then checks that the port belongs to a broker.
start_kafka() {
  local dir=$KAFKA_INSTANCE_DIR pid
  mkdir -p "$dir/data" "$dir/logs"
  exec 9>"$dir/.lock"
  flock -w $((READY_TIMEOUT + STOP_TIMEOUT + 60)) "$KAFKA_LOCK_FD" ||
    die "kafka: timed out waiting for another services.sh run on port $KAFKA_PORT"

  if port_open "$KAFKA_PORT"; then
    log "kafka: already running on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  if pid=$(live_pid_from_file "$dir/kafka.pid" "$(kafka_pid_pattern)"); then
    log "kafka: still starting (pid $pid)"
    return 0
  fi
  if port_open "$KAFKA_CONTROLLER_PORT"; then
    die "kafka: controller port $KAFKA_CONTROLLER_PORT is already in use by another" \
      "process: set KAFKA_CONTROLLER_PORT to a free port"
  fi

  render_kafka_properties >"$dir/server.properties"
  if [[ ! -f $dir/data/meta.properties ]]; then
    log "kafka: formatting the log directory $dir/data"
    if ! kafka_java kafka.tools.StorageTool format -t "$(new_cluster_id)" \
      -c "$dir/server.properties" >>"$dir/logs/console.log" 2>&1; then
      print_log_tail "$dir/logs/console.log"
      die "kafka: formatting $dir/data failed (see the output above)"
    fi
  fi

  log "kafka: starting on 127.0.0.1:$KAFKA_PORT (logs in $dir/logs)"
  # setsid puts the broker in its own session, so that Ctrl-C in the calling shell and the
  # end of a CI step do not stop it. Only `down` does.
  setsid nohup "$JAVA" "${KAFKA_JVM_OPTS[@]}" "-Dkafka.logs.dir=$dir/logs" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$dir/server.properties" \
    >>"$dir/logs/console.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$dir/kafka.pid"
}

# Python check that exits 0 when the broker returns metadata and a group coordinator.
# The first FindCoordinator request makes the broker create __consumer_offsets, so this
# check moves that one-off delay of a few seconds from the first consumer group to `up`.
KAFKA_READY_CHECK='
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient

async def check(bootstrap_servers):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.list_topics()
        await admin.find_coordinator("services-ready-check")
    finally:
        await admin.close()

asyncio.run(asyncio.wait_for(check(sys.argv[1]), timeout=10))
'

# Succeed when the broker is ready (see KAFKA_READY_CHECK), or only accepts TCP
# connections when the venv with aiokafka does not exist yet.
kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  if [[ $KAFKA_CLIENT_CHECK == 1 ]]; then
    "$VENV_PYTHON" -c "$KAFKA_READY_CHECK" "127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 8>&- 9>&-
  fi
}

wait_for_kafka() {
  local dir=$KAFKA_INSTANCE_DIR deadline=$((SECONDS + READY_TIMEOUT)) pid
  KAFKA_CLIENT_CHECK=0
  if [[ -x $VENV_PYTHON ]] && "$VENV_PYTHON" -c 'import aiokafka' 2>/dev/null; then
    KAFKA_CLIENT_CHECK=1
  else
    log "kafka: no $VENV_PYTHON with aiokafka yet, so readiness is only a TCP connect"
  fi
  until kafka_ready; do
    if ((SECONDS >= deadline)); then
      if ! live_pid_from_file "$dir/kafka.pid" "$(kafka_pid_pattern)" >/dev/null; then
        die "kafka: a process that services.sh did not start accepts connections on" \
          "127.0.0.1:$KAFKA_PORT but did not answer as a Kafka broker within" \
          "$READY_TIMEOUT s: stop it or choose another KAFKA_PORT"
      fi
      print_log_tail "$dir/logs/server.log"
      print_log_tail "$dir/logs/console.log"
      die "kafka: not ready on 127.0.0.1:$KAFKA_PORT after $READY_TIMEOUT s" \
        "(the broker is still running: see the logs above, and stop it with 'down')"
    fi
    # A broker that `up` started and that has exited will never become ready.
    if [[ -f $dir/kafka.pid ]] && ! pid=$(live_pid_from_file "$dir/kafka.pid" "$(kafka_pid_pattern)"); then
      if ! port_open "$KAFKA_PORT"; then
        print_log_tail "$dir/logs/server.log"
        print_log_tail "$dir/logs/console.log"
        rm -f "$dir/kafka.pid"
        die "kafka: the broker exited before it became ready (see the logs above)"
      fi
    fi
    sleep 1
  done
  log "kafka: ready on 127.0.0.1:$KAFKA_PORT"
}

stop_kafka() {
  local dir=$KAFKA_INSTANCE_DIR pid
  [[ -d $dir ]] || {
    log "kafka: nothing to stop on port $KAFKA_PORT (no $dir)"
    return 0
  }
  exec 9>"$dir/.lock"
  flock -w $((READY_TIMEOUT + STOP_TIMEOUT + 60)) "$KAFKA_LOCK_FD" ||
    die "kafka: timed out waiting for another services.sh run on port $KAFKA_PORT"
  if ! pid=$(live_pid_from_file "$dir/kafka.pid" "$(kafka_pid_pattern)"); then
    rm -f "$dir/kafka.pid"
    report_not_started kafka "$KAFKA_PORT"
    return 0
  fi
  log "kafka: stopping pid $pid"
  terminate_pid kafka "$pid"
  rm -f "$dir/kafka.pid"
}

# ---------------------------------------------------------------------------------------
# Redis

redis_pid_pattern() { printf 'redis-server 127.0.0.1:%s' "$REDIS_PORT"; }

start_redis() {
  local dir=$REDIS_INSTANCE_DIR
  mkdir -p "$dir"
  exec 8>"$dir/.lock"
  flock -w $((READY_TIMEOUT + STOP_TIMEOUT + 60)) "$REDIS_LOCK_FD" ||
    die "redis: timed out waiting for another services.sh run on port $REDIS_PORT"

  if port_open "$REDIS_PORT"; then
    log "redis: already running on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  log "redis: starting on 127.0.0.1:$REDIS_PORT (log in $dir/redis.log)"
  # --save "" turns off RDB snapshots because the append-only file already records
  # every write.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save "" \
    </dev/null 8>&- 9>&- ||
    {
      print_log_tail "$dir/redis.log"
      die "redis: redis-server failed to start (see the log above)"
    }
}

wait_for_redis() {
  local deadline=$((SECONDS + READY_TIMEOUT)) reply
  while :; do
    reply=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null 8>&- 9>&-) || true
    [[ $reply == PONG ]] && break
    if ((SECONDS >= deadline)); then
      print_log_tail "$REDIS_INSTANCE_DIR/redis.log"
      die "redis: no PONG from 127.0.0.1:$REDIS_PORT after $READY_TIMEOUT s (last reply: '$reply')"
    fi
    sleep 0.2
  done
  log "redis: ready on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
  local dir=$REDIS_INSTANCE_DIR pid
  [[ -d $dir ]] || {
    log "redis: nothing to stop on port $REDIS_PORT (no $dir)"
    return 0
  }
  exec 8>"$dir/.lock"
  flock -w $((READY_TIMEOUT + STOP_TIMEOUT + 60)) "$REDIS_LOCK_FD" ||
    die "redis: timed out waiting for another services.sh run on port $REDIS_PORT"
  if ! pid=$(live_pid_from_file "$dir/redis.pid" "$(redis_pid_pattern)"); then
    report_not_started redis "$REDIS_PORT"
    return 0
  fi
  log "redis: stopping pid $pid"
  # SHUTDOWN flushes the append-only file. NOSAVE skips the RDB snapshot.
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 8>&- 9>&- || true
  terminate_pid redis "$pid"
  rm -f "$dir/redis.pid"
}

# ---------------------------------------------------------------------------------------
# Stopping and status

report_not_started() {
  local name=$1 port=$2
  if port_open "$port"; then
    log "$name: port $port is in use by a process this script did not start; leaving it running"
  else
    log "$name: not running on port $port"
  fi
}

# Send SIGTERM (unless the process is already exiting), wait up to STOP_TIMEOUT seconds,
# then send SIGKILL.
terminate_pid() {
  local name=$1 pid=$2 deadline=$((SECONDS + STOP_TIMEOUT))
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "$name: pid $pid still running after $STOP_TIMEOUT s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  log "$name: stopped"
}

print_status() {
  local name=$1 port=$2 pid_file=$3 pattern=$4 pid
  if ! port_open "$port"; then
    log "$name: not running on 127.0.0.1:$port"
    return 1
  fi
  if pid=$(live_pid_from_file "$pid_file" "$pattern"); then
    log "$name: running on 127.0.0.1:$port (pid $pid, started by services.sh, data in $(dirname "$pid_file"))"
  else
    log "$name: running on 127.0.0.1:$port (not started by services.sh)"
  fi
}

# ---------------------------------------------------------------------------------------
# Commands

cmd_up() {
  local started=$SECONDS
  cmd_install
  # Start both before waiting for either, so that they boot in parallel.
  if manages redis; then start_redis; fi
  if manages kafka; then start_kafka; fi
  if manages redis; then wait_for_redis; fi
  if manages kafka; then wait_for_kafka; fi
  log "services ready after $((SECONDS - started)) s"
}

cmd_down() {
  if manages kafka; then stop_kafka; fi
  if manages redis; then stop_redis; fi
}

cmd_status() {
  local failed=0
  if manages kafka; then
    print_status kafka "$KAFKA_PORT" "$KAFKA_INSTANCE_DIR/kafka.pid" "$(kafka_pid_pattern)" || failed=1
  fi
  if manages redis; then
    print_status redis "$REDIS_PORT" "$REDIS_INSTANCE_DIR/redis.pid" "$(redis_pid_pattern)" || failed=1
  fi
  return "$failed"
}

main() {
  local command=${1:-}
  case $command in
    install | up | down | status)
      validate_settings
      "cmd_$command"
      ;;
    -h | --help | help)
      usage
      ;;
    *)
      usage >&2
      die "unknown command '$command': expected install, up, down or status"
      ;;
  esac
}

main "$@"
