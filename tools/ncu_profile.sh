#!/usr/bin/env bash
# Profile one verify call with Nsight Compute (--set full) and print a short summary: duration,
# throughputs, occupancy and the hottest SASS lines (tools/ncu_hot.py).
#   bash tools/ncu_profile.sh LABEL [tools/ncu_target.py options]
#   bash tools/ncu_profile.sh b1-random --backend cuda-cpp --batch 1 --mode random
# Reports land in ${NCU_DIR:-./ncu-reports}/LABEL.*; needs ncu on PATH and a CUDA device.
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,6p' "$0" | cut -c3-
  exit 0
fi
label=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
dir=${NCU_DIR:-./ncu-reports}
mkdir -p "$dir"
report="$dir/$label"
if ! ncu --profile-from-start off --set full --import-source yes -f -o "$report" \
  python3 "$here/ncu_target.py" "$@" >"$report.log" 2>&1; then
  tail -5 "$report.log"
  exit 1
fi
echo "=== $label ($*)"
ncu -i "$report.ncu-rep" --page details |
  grep -E "^  [a-zA-Z_]|Duration|DRAM Throughput|Memory Throughput|L2 Hit Rate|Occupancy|Registers Per|Block Size|Grid Size|Warp Cycles Per Issued" |
  sed 's/  */ /g' | cut -c1-110
ncu -i "$report.ncu-rep" --page source --print-source sass --csv >"$report.csv"
python3 "$here/ncu_hot.py" "$report.csv" --top 8 | cut -c1-150
