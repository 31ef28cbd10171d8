"""Print the SASS lines with the most warp-stall samples from an Nsight Compute source-page CSV
(``ncu -i R.ncu-rep --page source --print-source sass --csv``), with their stall reasons."""

import csv
import sys

rows = list(csv.reader(open(sys.argv[1], encoding="utf-8", errors="replace")))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
head_i = next(i for i, r in enumerate(rows) if any("Warp Stall Sampling (All" in c for c in r))
head = rows[head_i]
col = next(i for i, c in enumerate(head) if c.startswith("Warp Stall Sampling (All"))
src = next((i for i, c in enumerate(head) if c == "Source"), 1)
reasons = [i for i, c in enumerate(head) if c.startswith("stall_") or "Stall" in c and i != col]
body = [r for r in rows[head_i + 1 :] if len(r) > col]


def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


total = sum(num(r[col]) for r in body) or 1.0
order = sorted(range(len(body)), key=lambda i: -num(body[i][col]))
print(f"{len(body)} SASS lines, {total:.0f} samples")
for i in order[:top]:
    r = body[i]
    ctx = " | ".join(body[j][src][:40] for j in range(max(0, i - 2), i))
    print(f"{num(r[col]) / total:6.1%} L{i:5d} {r[src][:70]:70s}  prev: {ctx}")
