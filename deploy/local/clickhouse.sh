#!/usr/bin/env bash
# Ensures a local ClickHouse server runs on loopback for `make run` and
# `make test`: installs Debian's clickhouse-server with apt-get when it is
# missing, writes a project-local config under $CARDMETER_DATA/clickhouse,
# starts the server in the background and waits until it answers.
#
#   deploy/local/clickhouse.sh start   # idempotent: a running server is reused
#   deploy/local/clickhouse.sh stop      # returns once the server has exited
#   deploy/local/clickhouse.sh restart
#
# Environment: CARDMETER_DATA (default .data), CLICKHOUSE_TCP_PORT (19000),
# CLICKHOUSE_HTTP_PORT (18123).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
data=$(mkdir -p "${CARDMETER_DATA:-.data}" && cd "${CARDMETER_DATA:-.data}" && pwd)/clickhouse
tcp_port=${CLICKHOUSE_TCP_PORT:-19000}
http_port=${CLICKHOUSE_HTTP_PORT:-18123}

log() { echo "clickhouse.sh: $*" >&2; }
# shellcheck source=proc.sh
. "$here/proc.sh"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; exit 1; fi
}

install() {
  if command -v clickhouse-server >/dev/null && command -v clickhouse-client >/dev/null; then
    return
  fi
  log "installing clickhouse-server and clickhouse-client with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
}

ready() {
  clickhouse-client --host 127.0.0.1 --port "$tcp_port" --query 'SELECT 1' >/dev/null 2>&1
}

start() {
  install
  if ready; then log "already running on 127.0.0.1:$tcp_port"; return; fi
  mkdir -p "$data"/{db,tmp,user_files,format_schemas,log}
  sed -e "s#@DATA@#$data#g" -e "s#@TCP_PORT@#$tcp_port#g" -e "s#@HTTP_PORT@#$http_port#g" \
    "$here/clickhouse-config.xml" >"$data/config.xml"
  cp "$here/clickhouse-users.xml" "$data/users.xml"
  log "starting on 127.0.0.1:$tcp_port (data in $data)"
  # setsid: the server outlives this script and the make process that ran it.
  setsid nohup clickhouse-server --config-file="$data/config.xml" \
    >"$data/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$data/server.pid"
  wait_started "$data/server.pid" "clickhouse.sh: server" ready "$data/log/stdout.log" "$data/log/server.err.log"
  log "ready"
}

stop() {
  [ -f "$data/server.pid" ] || return 0
  stop_pid "$data/server.pid"
  log "stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  install) install ;;
  *) echo "usage: $0 start|stop|restart|install" >&2; exit 2 ;;
esac
