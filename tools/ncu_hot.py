"""The SASS lines with the most warp-stall samples in an Nsight Compute source page, with the
stall reasons that dominate each.

    ncu -i REPORT.ncu-rep --page source --print-source sass --csv > REPORT.csv
    python tools/ncu_hot.py REPORT.csv --top 20
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

STALL_COLUMN = "Warp Stall Sampling (All"


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def hot_lines(rows: list[list[str]], top: int) -> list[tuple[float, str, list[tuple[str, float]]]]:
    """``(share of all stall samples, SASS text, [(reason, samples), ...])`` of the top lines.

    Raises:
        ValueError: the CSV has no warp-stall sampling column (profile with ``--set full``).
    """
    try:
        head_i = next(i for i, r in enumerate(rows) if any(STALL_COLUMN in c for c in r))
    except StopIteration:
        raise ValueError(
            f"no {STALL_COLUMN!r}...) column: export the source page of a report taken with "
            "ncu --set full --import-source yes"
        ) from None
    head = rows[head_i]
    col = next(i for i, c in enumerate(head) if c.startswith(STALL_COLUMN))
    src = next((i for i, c in enumerate(head) if c == "Source"), 1)
    reasons = [i for i, c in enumerate(head) if i != col and ("stall_" in c or "Stall" in c)]
    body = [r for r in rows[head_i + 1 :] if len(r) > col]
    total = sum(_number(r[col]) for r in body) or 1.0
    body.sort(key=lambda r: -_number(r[col]))
    out = []
    for r in body[:top]:
        why = sorted(((head[i], _number(r[i])) for i in reasons if i < len(r)), key=lambda x: -x[1])
        out.append((_number(r[col]) / total, r[src].strip(), [x for x in why[:3] if x[1] > 0]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tools/ncu_hot.py", description="Hottest SASS lines of an ncu source-page CSV."
    )
    ap.add_argument("csv", type=Path, help="ncu --page source --print-source sass --csv output")
    ap.add_argument("--top", type=int, default=30, help="how many lines to print")
    args = ap.parse_args(argv)
    with args.csv.open(encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.reader(f))
    try:
        lines = hot_lines(rows, args.top)
    except ValueError as exc:
        print(f"{args.csv}: {exc}", file=sys.stderr)
        return 1
    for share, text, why in lines:
        reasons = ", ".join(f"{name} {value:g}" for name, value in why)
        print(f"{100 * share:5.1f}%  {text[:90]:90}  {reasons}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
