#!/usr/bin/env bash
# Profile one verify call with Nsight Compute (full set) and print a short summary: duration,
# throughputs, occupancy, the stall reasons that matter and the hottest SASS lines.
#   bash scripts/ncu_profile.sh LABEL B [key=value ...]     (arguments of scripts/ncu_target.py)
# Reports land in ${NCU_DIR:-/tmp/ncu}.
set -uo pipefail
label=$1; shift
dir=${NCU_DIR:-/tmp/ncu}; mkdir -p "$dir"
timeout 240 ncu --profile-from-start off --set full --import-source yes -f -o "$dir/$label" \
  python3 scripts/ncu_target.py "$@" >"$dir/$label.log" 2>&1 || { tail -5 "$dir/$label.log"; exit 1; }
echo "=== $label ($*)"
ncu -i "$dir/$label.ncu-rep" --page details 2>/dev/null | grep -E "^  [a-z_A-Z]|  Duration|DRAM Throughput|Memory Throughput|L2 Hit Rate|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Size|Grid Size|Warp Cycles Per Issued|Eligible Warps|Active Warps Per" | sed 's/  */ /g' | cut -c1-110
ncu -i "$dir/$label.ncu-rep" --page raw --csv --metrics regex:smsp__pcsamp_warps_issue_stalled_.* 2>/dev/null >"$dir/$label.stalls.csv"
python3 - "$dir/$label.stalls.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
if len(rows) < 3:
    sys.exit()
head, vals = rows[0], rows[2]
pairs = []
for h, v in zip(head, vals):
    if h.startswith("smsp__pcsamp_warps_issue_stalled_") and not h.endswith("_not_issued"):
        try:
            pairs.append((float(v.replace(",", "")), h.replace("smsp__pcsamp_warps_issue_stalled_", "")))
        except ValueError:
            pass
total = sum(p for p, _ in pairs) or 1
print("stalls:", ", ".join(f"{n} {p / total:.0%}" for p, n in sorted(pairs, reverse=True)[:7]))
PY
ncu -i "$dir/$label.ncu-rep" --page source --print-source sass --csv >"$dir/$label.csv" 2>/dev/null && python3 scripts/ncu_hot.py "$dir/$label.csv" 8 | cut -c1-150
