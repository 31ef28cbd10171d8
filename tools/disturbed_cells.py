"""Cells of a benchmark results file whose samples were disturbed by something other than the
call: runs of samples far above the cell's own fast samples, the mark of the host falling behind
the device (the events then time host gaps) or of another process on the machine.

A sample is disturbed when it exceeds ``--factor`` (default 2) times the cell's 10th-percentile
sample plus ``--slack-us`` (default 2 us); a cell is disturbed when at least ``--min-samples``
(default 3) of its samples are. Cells whose calls synchronize with the host (``launches.host_syncs
> 0``, e.g. torch-loop) time host work by design and are left out. Reads the raw samples
(``timing.samples``, and ``graph.samples`` for CUDA-graph replay), so the results must have been
written with samples kept (the default).

    python tools/disturbed_cells.py run1/results.json run2/results.json

Exits 1 when a disturbed cell is found, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Disturbed:
    """One disturbed timing of one cell."""

    cell: str
    timing: str
    n: int
    disturbed: int
    p10_s: float
    median_s: float

    @property
    def median_lifted(self) -> bool:
        return 2 * self.disturbed > self.n


def _cell_name(c: dict[str, Any]) -> str:
    return (
        f"{c.get('backend')} {c.get('mode')} {c.get('dtype')} B={c.get('batch')} K={c.get('k')} "
        f"V={c.get('vocab')} {c.get('accept')}"
    )


def disturbed_cells(
    doc: dict[str, Any], factor: float = 2.0, slack_s: float = 2e-6, min_samples: int = 3
) -> tuple[list[Disturbed], int]:
    """The disturbed timings of a results document, and how many timings were examined.

    Raises:
        ValueError: an ok cell's timing holds no samples (results written without them).
    """
    found: list[Disturbed] = []
    examined = 0
    for c in doc.get("cells", []):
        if c.get("status") != "ok":
            continue
        if ((c.get("launches") or {}).get("host_syncs") or 0) > 0:
            continue
        for key in ("timing", "graph"):
            t = c.get(key)
            if not isinstance(t, dict) or t.get("median") is None:
                continue
            samples = t.get("samples")
            if not samples:
                raise ValueError(
                    f"cell {_cell_name(c)}: {key}.samples is missing; rerun the benchmark with "
                    "its samples kept"
                )
            examined += 1
            ordered = sorted(samples)
            p10 = ordered[len(ordered) // 10]
            limit = factor * p10 + slack_s
            bad = sum(s > limit for s in samples)
            if bad >= min_samples:
                median = ordered[len(ordered) // 2]
                found.append(Disturbed(_cell_name(c), key, len(samples), bad, p10, median))
    return found, examined


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tools/disturbed_cells.py",
        description="List the cells of benchmark results whose samples were disturbed.",
    )
    ap.add_argument("results", nargs="+", type=Path, help="results.json files of specsample bench")
    ap.add_argument("--factor", type=float, default=2.0, help="times the cell's 10th percentile")
    ap.add_argument("--slack-us", type=float, default=2.0, help="added to the limit, microseconds")
    ap.add_argument("--min-samples", type=int, default=3, help="disturbed samples that flag a cell")
    args = ap.parse_args(argv)
    total = 0
    for path in args.results:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            found, examined = disturbed_cells(
                doc, args.factor, args.slack_us * 1e-6, args.min_samples
            )
        except (OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: {len(found)} disturbed of {examined} timings")
        for d in found:
            lifted = "  (median lifted)" if d.median_lifted else ""
            print(
                f"  {d.cell} [{d.timing}]: {d.disturbed}/{d.n} samples > limit; "
                f"p10 {d.p10_s * 1e6:.2f} us, median {d.median_s * 1e6:.2f} us{lifted}"
            )
        total += len(found)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
