#!/bin/bash
# Restart with years of closed cases, before and after the cold file, side by side: the
# same seeded home (10k open cases + N paid, sealed ones with their journal) read by
# relance at BEFORE (default 1832ad3, the last commit without closed.jsonl) and by this
# checkout, one after the other, for N = 10k and 30k. Writes restart-closed-N.json and
# restart-closed-N-before.json in build/bench/results (run_all renders both).
#
#     bash bench/closed_side_by_side.sh [BEFORE]
set -euo pipefail
BEFORE=${1:-1832ad3}
HERE=$(cd "$(dirname "$0")" && pwd)
for N in 10000 30000; do
  bash "$HERE/before_after.sh" "$BEFORE" "restart-closed-$N" restart --size 100k --runs 5 --closed "$N"
done
