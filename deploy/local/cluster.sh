#!/usr/bin/env bash
# A cardmeter cluster on this one machine (`make cluster`, `make
# cluster-stop`): three nats-server processes in one JetStream cluster
# (every stream and bucket with three replicas, sync_interval: always), two
# ingest, two projector, two sink and two clock processes, and the local
# ClickHouse. Any one process may be killed and the pipeline goes on. The
# nats-server binary is the module this checkout's go.mod pins, built with
# `go install`; cardmeter's binaries are built from the checkout.
#
#   deploy/local/cluster.sh start    # idempotent: what runs is reused
#   deploy/local/cluster.sh stop     # every process of it, SIGTERM, waits
#   deploy/local/cluster.sh status   # which processes run
#
# Environment: CARDMETER_DATA (default .data; the cluster lives in its
# cluster/ folder), CLUSTER_PARTITIONS (32), CLUSTER_DB (ClickHouse
# database, cardmeter_cluster). Ports, all on 127.0.0.1: NATS clients
# 14222-14224, routes 16222-16224, monitoring 18222-18224; the APIs 8081
# and 8082; the other roles' health and metrics 9193-9198.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data=$(mkdir -p "${CARDMETER_DATA:-.data}" && cd "${CARDMETER_DATA:-.data}" && pwd)/cluster
bin=$data/bin
partitions=${CLUSTER_PARTITIONS:-32}
db=${CLUSTER_DB:-cardmeter_cluster}
nats_urls=nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224

log() { echo "cluster.sh: $*" >&2; }
# shellcheck source=proc.sh
. "$here/proc.sh"

# the processes, in start order: name, binary, health URL, arguments
procs=(
  "ingest-1|ingest|http://127.0.0.1:8081|--http-addr 127.0.0.1:8081"
  "ingest-2|ingest|http://127.0.0.1:8082|--http-addr 127.0.0.1:8082"
  "clock-1|clock|http://127.0.0.1:9197|--health-addr 127.0.0.1:9197"
  "clock-2|clock|http://127.0.0.1:9198|--health-addr 127.0.0.1:9198"
  "projector-1|projector|http://127.0.0.1:9193|--health-addr 127.0.0.1:9193 --instance projector-1"
  "projector-2|projector|http://127.0.0.1:9194|--health-addr 127.0.0.1:9194 --instance projector-2"
  "sink-1|sink|http://127.0.0.1:9195|--health-addr 127.0.0.1:9195 --instance sink-1"
  "sink-2|sink|http://127.0.0.1:9196|--health-addr 127.0.0.1:9196 --instance sink-2"
)

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

build() {
  mkdir -p "$bin"
  local want
  want=$(awk '$1 == "github.com/nats-io/nats-server/v2" {print $2}' "$root/go.mod")
  if [ ! -x "$bin/nats-server" ] || [ "$(cat "$bin/nats-server.version" 2>/dev/null)" != "$want" ]; then
    log "installing nats-server $want (go install)"
    (cd "$root" && GOBIN="$bin" go install "github.com/nats-io/nats-server/v2@$want")
    echo "$want" >"$bin/nats-server.version"
  fi
  log "building cardmeter's binaries"
  (cd "$root" && go build -o "$bin/" ./services/cardmeter ./services/ingest ./services/projector ./services/sink ./services/clock)
}

start_nats() {
  local n=$1 dir="$data/nats-$1"
  mkdir -p "$dir/store"
  running "$dir/pid" && return
  cat >"$dir/nats.conf" <<EOF
server_name: n$n
listen: 127.0.0.1:$((14221 + n))
http: 127.0.0.1:$((18221 + n))
max_payload: 8MB
jetstream {
  store_dir: "$dir/store"
  sync_interval: always
}
cluster {
  name: cardmeter
  listen: 127.0.0.1:$((16221 + n))
  routes: [
    "nats-route://127.0.0.1:16222"
    "nats-route://127.0.0.1:16223"
    "nats-route://127.0.0.1:16224"
  ]
}
EOF
  setsid nohup "$bin/nats-server" -c "$dir/nats.conf" >"$dir/server.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

# wait_for URL what: until the URL answers 200, or fails after 120 s
wait_for() {
  for _ in $(seq 1 240); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 200 ]; then return; fi
    sleep 0.5
  done
  log "$2 not ready within 120 s ($1)"; return 1
}

start() {
  bash "$here/clickhouse.sh" start
  build
  for n in 1 2 3; do start_nats "$n"; done
  for n in 1 2 3; do wait_for "http://127.0.0.1:$((18221 + n))/healthz?js-enabled-only=true" "nats-server n$n"; done
  log "making the streams and buckets: $partitions partitions, three replicas"
  "$bin/cardmeter" setup --nats-url "$nats_urls" --partitions "$partitions" --replicas 3
  mkdir -p "$data/log"
  for p in "${procs[@]}"; do
    IFS='|' read -r name exe url args <<<"$p"
    running "$data/$name.pid" && continue
    # shellcheck disable=SC2086 # args are words
    CARDMETER_NATS_URL=$nats_urls CARDMETER_WAIT_FOR_TOPOLOGY=true CARDMETER_CLICKHOUSE_DB=$db \
      setsid nohup "$bin/$exe" --data-dir "$data/$name" $args >"$data/log/$name.log" 2>&1 </dev/null &
    echo $! >"$data/$name.pid"
  done
  for p in "${procs[@]}"; do
    IFS='|' read -r name _ url _ <<<"$p"
    wait_for "$url/readyz" "$name" || { tail -5 "$data/log/$name.log" >&2; exit 1; }
  done
  cat <<EOF
cardmeter cluster ready:
  API          http://127.0.0.1:8081  and  http://127.0.0.1:8082  (either; open to anyone on loopback: no tokens)
  NATS         $nats_urls
  ClickHouse   127.0.0.1:19000, database $db
  logs         $data/log/   (NATS: $data/nats-N/server.log)
  stop it      make cluster-stop
EOF
}

stop() {
  local i
  for ((i = ${#procs[@]} - 1; i >= 0; i--)); do
    IFS='|' read -r name _ <<<"${procs[$i]}"
    stop_pid "$data/$name.pid"
  done
  for n in 3 2 1; do stop_pid "$data/nats-$n/pid"; done
  log "stopped (ClickHouse goes on: make clickhouse-stop)"
}

status() {
  for n in 1 2 3; do running "$data/nats-$n/pid" && echo "nats-$n running" || echo "nats-$n stopped"; done
  for p in "${procs[@]}"; do
    IFS='|' read -r name _ <<<"$p"
    running "$data/$name.pid" && echo "$name running" || echo "$name stopped"
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
