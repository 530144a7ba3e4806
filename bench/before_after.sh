#!/bin/bash
# One bench at two commits, one after the other on the same machine: the code of BEFORE
# (with this checkout's bench, so both are measured alike) writes RESULT-before.json,
# then this checkout writes RESULT.json, both in build/bench/results (run_all renders the
# pairs it knows). RESULT is the name the bench saves under.
#
#     bash bench/before_after.sh BEFORE RESULT MODULE [ARGS...]
#     bash bench/before_after.sh 12075a3 restart restart --size 100k --runs 5
set -euo pipefail
BEFORE=$1 RESULT=$2 MODULE=$3
shift 3
HERE=$(cd "$(dirname "$0")/.." && pwd)
OLD=$(mktemp -d /tmp/relance-before.XXXXXX)
trap 'git -C "$HERE" worktree remove --force "$OLD/tree" >/dev/null 2>&1 || true; rm -rf "$OLD"' EXIT
git -C "$HERE" worktree add --detach "$OLD/tree" "$BEFORE" >/dev/null
cp "$HERE"/bench/*.py "$OLD/tree/bench/"
ln -s "$HERE/build" "$OLD/tree/build"
mkdir -p "$OLD/pkg" && ln -s "$OLD/tree/daemon" "$OLD/pkg/relance"
R=$HERE/build/bench/results
(cd "$OLD/tree" && PYTHONPATH="$OLD/pkg" python -m "bench.$MODULE" "$@")
mv "$R/$RESULT.json" "$R/$RESULT-before.json"
(cd "$HERE" && python -m "bench.$MODULE" "$@")
