"""The report's headline ("money slide"): the headline shapes x backends, each backend's speedup
over torch-loop and, when third-party backends are installed, over the fastest of them.

Headline shapes: per mode, the grid's first dtype and acceptance regime, its largest vocabulary
and largest K, and every batch size (at most :data:`MAX_BATCHES`, spread over the grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import tables as T

MAX_BATCHES = 4


@dataclass
class Headline:
    """``shapes``: workload keys ``(mode, dtype, accept, vocab, k, batch)``; ``backends``: the
    backends shown (torch-loop is the yardstick, not a bar); ``vs_loop`` / ``vs_third_party``:
    ``{(shape, backend): ratio}`` (nan when missing or noisy); ``noisy``: the left-out pairs."""

    shapes: list[tuple]
    backends: list[str]
    vs_loop: dict[tuple, float]
    vs_third_party: dict[tuple, float]
    noisy: set[tuple]
    third_party: list[str]

    @property
    def empty(self) -> bool:
        ratios = (*self.vs_loop.values(), *self.vs_third_party.values())
        return not any(math.isfinite(v) for v in ratios)


def _spread(values: list[int], n: int) -> list[int]:
    if len(values) <= n:
        return values
    idx = sorted({round(i * (len(values) - 1) / (n - 1)) for i in range(n)})
    return [values[i] for i in idx]


def headline_shapes(doc: dict[str, Any]) -> list[tuple]:
    """The headline workload keys present in ``doc``'s ok cells, random mode first."""
    wl = T.by_workload(doc)
    shapes = []
    for mode in ("random", "greedy"):
        keys = [k for k in wl if k[0] == mode]
        if not keys:
            continue
        grid = (doc.get("config") or {}).get("grid", {})
        dtypes = [d for d in grid.get("dtype", []) if any(k[1] == d for k in keys)]
        accepts = [str(a) for a in grid.get("accept", []) if any(k[2] == str(a) for k in keys)]
        dtype = dtypes[0] if dtypes else keys[0][1]
        accept = accepts[0] if accepts else keys[0][2]
        keys = [k for k in keys if k[1] == dtype and k[2] == accept]
        vocab = max(k[3] for k in keys)
        kk = max(k[4] for k in keys if k[3] == vocab)
        batches = sorted({k[5] for k in keys if k[3] == vocab and k[4] == kk})
        shapes += [(mode, dtype, accept, vocab, kk, b) for b in _spread(batches, MAX_BATCHES)]
    return shapes


def headline(doc: dict[str, Any]) -> Headline:
    """The headline numbers of ``doc`` (see the module docstring)."""
    sp = T.speedups(doc)
    wl = T.by_workload(doc)
    shapes = headline_shapes(doc)
    third = [b for b in T.third_party(doc) if any(b in wl[s] for s in shapes)]
    backends = [
        b for b in T.backends_in(doc) if b != T.BASELINE and any(b in wl[s] for s in shapes)
    ]
    vs_loop: dict[tuple, float] = {}
    vs_3p: dict[tuple, float] = {}
    noisy: set[tuple] = set()
    for s in shapes:
        cells = wl[s]
        loud = {b for b, c in cells.items() if T.is_noisy(c)}
        for b in backends:
            if b not in cells:
                continue
            ratios = sp[s][b]
            if b in loud or T.BASELINE in loud:
                noisy.add((s, b))
                vs_loop[(s, b)] = math.nan
            else:
                vs_loop[(s, b)] = ratios["vs_baseline"]
            peers = [p for p in third if p != b and p in cells]
            if b in loud or any(p in loud for p in peers):
                noisy.add((s, b))
                vs_3p[(s, b)] = math.nan
            else:
                vs_3p[(s, b)] = ratios["vs_third_party"]
    return Headline(shapes, backends, vs_loop, vs_3p, noisy, third)


def shape_label(shape: tuple) -> str:
    mode, dtype, accept, vocab, k, batch = shape
    extra = "" if dtype == "float32" else f" {dtype}"
    return f"{mode} B={batch} K={k} V={vocab} {accept}{extra}"


def headline_table(h: Headline, fmt: str = "github") -> str:
    """One row per headline shape, one column per backend: ``speedup vs torch-loop`` and, with
    third-party backends, ``/ vs fastest third-party`` after a slash."""
    from tabulate import tabulate

    rows = []
    for s in h.shapes:
        row = [shape_label(s)]
        for b in h.backends:
            if (s, b) not in h.vs_loop:
                row.append("")
                continue
            if (s, b) in h.noisy:
                text = "noisy"
            else:
                text = T.fmt_ratio(h.vs_loop[(s, b)])
                if h.third_party:
                    text += " / " + T.fmt_ratio(h.vs_third_party.get((s, b)))
            row.append(text)
        rows.append(row)
    # Peers (backends that wrap another library, or third-party plugins) are marked in the header.
    names = [f"{b} (peer)" if b in h.third_party else b for b in h.backends]
    return tabulate(rows, headers=["shape", *names], tablefmt=fmt, disable_numparse=True)
