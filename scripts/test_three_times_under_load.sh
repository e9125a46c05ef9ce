#!/usr/bin/env bash
# `make test` (= .ci/run) three times in a row, each on a fresh clean clone of this checkout's
# HEAD, while a second CPU-heavy process (a pure-Python busy loop pinning one core) runs beside it:
# the suite must not depend on an idle machine (issue 13). Prints one line per run; stops at the
# first failure. Usage: scripts/test_three_times_under_load.sh [OUTPUT_DIR]
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-/tmp/bpnet-test-under-load}" && cd "${1:-/tmp/bpnet-test-under-load}" && pwd)
COMMIT=$(git -C "$REPO" rev-parse HEAD)
python3 -c "while True: pass" &
BUSY=$!
trap 'kill $BUSY 2>/dev/null' EXIT
echo "commit $COMMIT, busy loop pid $BUSY, start $(date -u +%FT%TZ)" | tee -a "$OUT/summary.log"
for i in 1 2 3; do
  rm -rf "$OUT/clone"
  git clone -q "$REPO" "$OUT/clone" && git -C "$OUT/clone" checkout -q "$COMMIT"
  start=$(date +%s)
  (cd "$OUT/clone" && bash .ci/run) > "$OUT/run$i.log" 2>&1
  rc=$?
  echo "run $i: rc=$rc, $(( $(date +%s) - start )) s, loadavg $(cut -d' ' -f1-3 /proc/loadavg), $(tail -1 "$OUT/run$i.log")" \
    | tee -a "$OUT/summary.log"
  [ $rc = 0 ] || exit $rc
done
