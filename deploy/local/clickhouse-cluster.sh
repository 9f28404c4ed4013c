#!/usr/bin/env bash
# A replicated ClickHouse on this one machine, for `--clickhouse-cluster`
# and its tests: ZooKeeper (Debian's zookeeper package) and two ClickHouse
# servers, replicas of one shard of the cluster "cardmeter", on loopback.
# Installs what is missing with apt-get; each server's config is the local
# one (clickhouse-config.xml) plus a config.d file naming ZooKeeper, the
# cluster, the server's macros and its interserver port.
#
#   deploy/local/clickhouse-cluster.sh start        # idempotent: what runs is reused
#   deploy/local/clickhouse-cluster.sh stop         # both servers and ZooKeeper
#   deploy/local/clickhouse-cluster.sh stop-replica N    # N = 1 or 2; returns once it exited
#   deploy/local/clickhouse-cluster.sh start-replica N
#   deploy/local/clickhouse-cluster.sh ports        # "19101 19102": the native ports
#
# Environment: CARDMETER_DATA (default .data), ZOOKEEPER_PORT (12181),
# CLICKHOUSE_REPLICA_PORTS ("19101 19102"); each replica's HTTP port is its
# native port + 100 and its interserver port + 200.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
data=$(mkdir -p "${CARDMETER_DATA:-.data}" && cd "${CARDMETER_DATA:-.data}" && pwd)/clickhouse-cluster
zk_port=${ZOOKEEPER_PORT:-12181}
read -r -a ports <<<"${CLICKHOUSE_REPLICA_PORTS:-19101 19102}"

log() { echo "clickhouse-cluster.sh: $*" >&2; }
# shellcheck source=proc.sh
. "$here/proc.sh"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; exit 1; fi
}

install() {
  bash "$here/clickhouse.sh" install
  if [ -x /usr/share/zookeeper/bin/zkServer.sh ] && command -v java >/dev/null; then
    return
  fi
  log "installing zookeeper with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq zookeeper >/dev/null
}

zk_ready() {
  # "ruok" is on the default four-letter-word whitelist: "imok" while serving
  [ "$( (exec 3<>/dev/tcp/127.0.0.1/"$zk_port" && printf ruok >&3 && timeout 2 cat <&3) 2>/dev/null)" = imok ]
}

start_zk() {
  if zk_ready; then return; fi
  mkdir -p "$data/zk/conf" "$data/zk/data" "$data/zk/log"
  cat >"$data/zk/conf/zoo.cfg" <<EOF
tickTime=2000
dataDir=$data/zk/data
clientPort=$zk_port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,stat
maxClientCnxns=200
EOF
  cp /etc/zookeeper/conf/log4j.properties "$data/zk/conf/" 2>/dev/null || true
  log "starting ZooKeeper on 127.0.0.1:$zk_port"
  # the config's path as the second argument: Debian's zkEnv.sh sets its own folder
  ZOO_LOG_DIR="$data/zk/log" ZOO_LOG4J_PROP="WARN,ROLLINGFILE" \
    setsid nohup /usr/share/zookeeper/bin/zkServer.sh start-foreground "$data/zk/conf/zoo.cfg" >"$data/zk/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$data/zk/server.pid"
  wait_started "$data/zk/server.pid" "clickhouse-cluster.sh: ZooKeeper" zk_ready "$data/zk/log/stdout.log"
}

replica_dir() { echo "$data/r$1"; }
port_of() { echo "${ports[$(($1 - 1))]}"; }

ready() {
  clickhouse-client --host 127.0.0.1 --port "$(port_of "$1")" --query 'SELECT 1' >/dev/null 2>&1
}

start_replica() {
  local n=$1 dir port
  dir=$(replica_dir "$n")
  port=$(port_of "$n")
  if ready "$n"; then return; fi
  mkdir -p "$dir"/{db,tmp,user_files,format_schemas,log,config.d}
  sed -e "s#@DATA@#$dir#g" -e "s#@TCP_PORT@#$port#g" -e "s#@HTTP_PORT@#$((port + 100))#g" \
    "$here/clickhouse-config.xml" >"$dir/config.xml"
  cp "$here/clickhouse-users.xml" "$dir/users.xml"
  {
    echo "<yandex>"
    echo "  <interserver_http_host>127.0.0.1</interserver_http_host>"
    echo "  <interserver_http_port>$((port + 200))</interserver_http_port>"
    echo "  <zookeeper><node><host>127.0.0.1</host><port>$zk_port</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>"
    echo "  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>"
    echo "  <macros><shard>01</shard><replica>r$n</replica></macros>"
    echo "  <remote_servers><cardmeter><shard><internal_replication>true</internal_replication>"
    for p in "${ports[@]}"; do
      echo "    <replica><host>127.0.0.1</host><port>$p</port></replica>"
    done
    echo "  </shard></cardmeter></remote_servers>"
    echo "</yandex>"
  } >"$dir/config.d/cluster.xml"
  log "starting replica r$n on 127.0.0.1:$port (data in $dir)"
  setsid nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/server.pid"
  # shellcheck disable=SC2317 # called by wait_started
  ready_n() { ready "$n"; }
  wait_started "$dir/server.pid" "clickhouse-cluster.sh: replica r$n" ready_n "$dir/log/stdout.log" "$dir/log/server.err.log"
}

start() {
  install
  start_zk
  for n in $(seq 1 "${#ports[@]}"); do start_replica "$n"; done
  log "ready: ZooKeeper 127.0.0.1:$zk_port, replicas on 127.0.0.1:${ports[*]} (cluster cardmeter)"
}

stop() {
  for n in $(seq 1 "${#ports[@]}"); do stop_pid "$(replica_dir "$n")/server.pid"; done
  stop_pid "$data/zk/server.pid"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  stop-replica)
    stop_pid "$(replica_dir "${2:?replica number}")/server.pid"
    if ready "$2"; then
      log "replica r$2 still answers on port $(port_of "$2"): started from another folder's data (CARDMETER_DATA)? stop it there"
      exit 1
    fi ;;
  start-replica) start_replica "${2:?replica number}" ;;
  ports) echo "${ports[*]}" ;;
  install) install ;;
  *) echo "usage: $0 start|stop|stop-replica N|start-replica N|ports|install" >&2; exit 2 ;;
esac
