#!/usr/bin/env bash
# old (da96e61, ids in memory) vs new (in memory, and as the projector runs it), interleaved
set -e
for i in 1 2 3 4 5; do
  (cd /tmp/oldtree && go test -run '^$' -bench '^BenchmarkApplyUsage$' -benchtime 3000000x -count 1 ./pkg/card | grep Benchmark | sed 's/^/old /')
  (cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && go test -run '^$' -bench '^BenchmarkApplyUsage(Indexed)?$' -benchtime 3000000x -count 1 ./pkg/card | grep Benchmark | sed 's/^/new /')
done
