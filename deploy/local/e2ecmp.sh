#!/usr/bin/env bash
set -e
args="--cards 100000 --e2e 30s --ingest-records 1000000 --formats csv --stop-samples 50"
(cd /tmp/oldtree && go run ./services/bench $args --data-dir /tmp/e2e-old --clickhouse-db bench_old > /tmp/e2e-old.md 2> /tmp/e2e-old.log)
(cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && go run ./services/bench $args --data-dir /tmp/e2e-new --clickhouse-db bench_new > /tmp/e2e-new.md 2> /tmp/e2e-new.log)
echo done
