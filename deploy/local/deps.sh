#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages the tests need besides
# ClickHouse (which clickhouse.sh installs): docker-compose, to validate
# docker-compose.yml without a Docker engine, and chromium, in which the
# console's tests run headless. Idempotent.
set -euo pipefail
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps.sh: installing ${missing[*]} with apt-get" >&2
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
