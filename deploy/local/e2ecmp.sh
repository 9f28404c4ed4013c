#!/usr/bin/env bash
# End to end before and after, back to back: the load harness of an older
# tree (default /tmp/oldtree: git worktree add /tmp/oldtree da96e61) and
# of this one, in pairs whose order alternates (old-new, new-old, ...) so
# that the machine's drift does not favour either. Prints each run's end
# to end rate and durable ingest rate, then the ratio of the means.
#
#   bash deploy/local/e2ecmp.sh [pairs]        # default 3
#
# OLD_ARGS and NEW_ARGS are added to each side's flags: with OLDTREE set to
# this checkout, the same code compares two settings, e.g.
#   OLDTREE=. OLD_ARGS="--partitions 8" NEW_ARGS="--partitions 32" bash deploy/local/e2ecmp.sh 2
set -euo pipefail
pairs=${1:-3}
old=$(cd "${OLDTREE:-/tmp/oldtree}" && pwd)
new=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
args="--cards 100000 --e2e 30s --ingest-records 1000000 --formats csv --stop-samples 50"
(cd "$old" && go build -o /tmp/e2e-bench-old ./services/bench)
(cd "$new" && go build -o /tmp/e2e-bench-new ./services/bench)
run() { # which, index
	(cd "$([ "$1" = old ] && echo "$old" || echo "$new")" &&
		/tmp/e2e-bench-"$1" $args $([ "$1" = old ] && echo "${OLD_ARGS:-}" || echo "${NEW_ARGS:-}") --data-dir /tmp/e2e-"$1" --clickhouse-db bench_"$1" >/tmp/e2e-"$1"-"$2".md 2>/tmp/e2e-"$1"-"$2".log)
	e2e=$(grep -o 'end to end (ingest → projected → in ClickHouse)[^|]*| [0-9]* CDRs/s' /tmp/e2e-"$1"-"$2".md | grep -o '[0-9]* CDRs/s' | grep -o '[0-9]*')
	ing=$(grep -m1 -o 'durable ingest[^|]*| [0-9]* CDRs/s' /tmp/e2e-"$1"-"$2".md | grep -o '[0-9]* CDRs/s' | grep -o '[0-9]*' || echo "?")
	echo "$1 $2 e2e=$e2e ingest=$ing"
	echo "$1 $e2e" >>/tmp/e2e-rates
}
: >/tmp/e2e-rates
for i in $(seq 1 "$pairs"); do
	if [ $((i % 2)) = 1 ]; then run old "$i"; run new "$i"; else run new "$i"; run old "$i"; fi
done
awk '{s[$1]+=$2; n[$1]++} END {o=s["old"]/n["old"]; w=s["new"]/n["new"]; printf "mean end to end: before %.0f, after %.0f CDRs/s; after/before %.2f\n", o, w, w/o}' /tmp/e2e-rates
