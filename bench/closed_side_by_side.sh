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
HERE=$(cd "$(dirname "$0")/.." && pwd)
OLD=$(mktemp -d /tmp/relance-before.XXXXXX)
trap 'git -C "$HERE" worktree remove --force "$OLD/tree" >/dev/null 2>&1 || true; rm -rf "$OLD"' EXIT
git -C "$HERE" worktree add --detach "$OLD/tree" "$BEFORE" >/dev/null
# The old code, with this checkout's bench (its seeding writes the closed cases' journal).
cp "$HERE/bench/restart.py" "$HERE/bench/state_cost.py" "$OLD/tree/bench/"
ln -s "$HERE/build" "$OLD/tree/build"
mkdir -p "$OLD/pkg" && ln -s "$OLD/tree/daemon" "$OLD/pkg/relance"
R=$HERE/build/bench/results
for N in 10000 30000; do
  (cd "$OLD/tree" && PYTHONPATH="$OLD/pkg" python -m bench.restart --size 100k --runs 5 --closed "$N")
  mv "$R/restart-closed-$N.json" "$R/restart-closed-$N-before.json"
  (cd "$HERE" && python -m bench.restart --size 100k --runs 5 --closed "$N")
done
