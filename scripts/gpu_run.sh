#!/usr/bin/env bash
# `specsample run` on the lent GPU machine, which may take longer than one device call (10 min):
# `start` launches it in a process session of its own (so it outlives the call) and waits;
# `wait` waits again in the next call. Once the run has ended, its report comes back in $OUT.
#   bash scripts/gpu_run.sh start [WAIT_S] [EXTRA specsample run ARGS...]
#   bash scripts/gpu_run.sh wait [WAIT_S]
# The machine goes back after 30 minutes held, so the run is interrupted (SIGINT: it keeps the
# cells done and still writes the report) after RUN_LIMIT_S (default 1400 s).
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
WORK=${WORK:-/tmp/specsample-gpu-run}
stage=${1:?usage: gpu_run.sh start|wait [WAIT_S] [ARGS...]}
wait_s=${2:-560}
shift $(($# < 2 ? $# : 2))
if [ "$stage" = start ]; then
  rm -rf "$WORK" && mkdir -p "$WORK"
  python3 -m pip install -q --no-deps --no-build-isolation -e . ./examples/specsample-numpy >"$WORK/pip.log" 2>&1 || { tail "$WORK/pip.log"; exit 1; }
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$WORK/env.txt"
  specsample build 2>&1 | tail -1
  setsid nohup bash -c "PYTHONUNBUFFERED=1 timeout -s INT ${RUN_LIMIT_S:-1400} specsample run --out '$WORK/report' $* >'$WORK/run.log' 2>&1; echo \$? >'$WORK/exit'" </dev/null >/dev/null 2>&1 &
  echo "started specsample run $*"
elif [ "$stage" != wait ]; then
  echo "unknown stage $stage" >&2; exit 2
fi
deadline=$((SECONDS + wait_s))
while [ ! -f "$WORK/exit" ] && [ $SECONDS -lt $deadline ]; do sleep 5; done
python3 - "$WORK/report/results.json" <<'PY' 2>/dev/null || true
import json, sys
d = json.load(open(sys.argv[1]))
print(f"bench cells written: {len(d['cells'])}")
PY
tr '\r' '\n' <"$WORK/run.log" | grep -v '^\s*$' | tail -4
if [ -f "$WORK/exit" ]; then
  echo "specsample run exit: $(cat "$WORK/exit")"
  cp "$WORK/run.log" "$WORK/env.txt" "$OUT/"
  tar -czf "$OUT/report.tar.gz" -C "$WORK" report
  tr '\r' '\n' <"$WORK/run.log" | grep -v 'cell/s\]' | tail -60
else
  echo "still running"
fi
