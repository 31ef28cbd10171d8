"""matplotlib PNGs of a results document (Agg backend; matplotlib is imported only here, lazily).

Per mode: latency vs batch and vs K per backend (log axes), speedup heatmaps vs torch-loop and vs
the fastest peer, and each backend's ratio to the floor.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .tables import BASELINE, backends_in, by_workload, speedups

_STYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return matplotlib, plt


def _grid_values(doc: dict[str, Any], mode: str) -> dict[str, list]:
    cells = [c for c in doc.get("cells", []) if c["mode"] == mode and c["status"] == "ok"]
    return {
        "batch": sorted({c["batch"] for c in cells}),
        "k": sorted({c["k"] for c in cells}),
        "vocab": sorted({c["vocab"] for c in cells}),
        "dtype": sorted({c["dtype"] for c in cells}),
        "accept": list(dict.fromkeys(c["accept"] for c in cells)),
    }


def _colors(backends: list[str]) -> dict[str, Any]:
    _, plt = _mpl()
    cmap = plt.get_cmap("tab10")
    return {b: cmap(i % 10) for i, b in enumerate(backends)}


def _line_plot(doc, mode, out: Path, xname: str, panel_name: str) -> Path | None:
    """Median latency vs ``xname`` (batch or k); panels over vocab (rows) x ``panel_name``."""
    _, plt = _mpl()
    gv = _grid_values(doc, mode)
    if not gv["batch"]:
        return None
    backends = backends_in(doc)
    colors = _colors(backends)
    dtype = gv["dtype"][0]
    rows, cols = gv["vocab"], gv[panel_name]
    width = 3.4 * len(cols) + 2.8
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(width, 2.9 * len(rows) + 0.8), squeeze=False, sharey=True
    )
    wl = by_workload(doc)
    for i, vocab in enumerate(rows):
        for j, pv in enumerate(cols):
            ax = axes[i][j]
            for bi, b in enumerate(backends):
                for ai, acc in enumerate(gv["accept"]):
                    xs, ys, lo, hi = [], [], [], []
                    for x in gv[xname]:
                        batch = x if xname == "batch" else pv
                        k = x if xname == "k" else pv
                        c = wl.get((mode, dtype, acc, vocab, k, batch), {}).get(b)
                        if c is None:
                            continue
                        t = c["timing"]
                        xs.append(x)
                        ys.append(t["median"] * 1e6)
                        lo.append(t["q1"] * 1e6)
                        hi.append(t["q3"] * 1e6)
                    if not xs:
                        continue
                    ax.plot(
                        xs,
                        ys,
                        _STYLES[ai % len(_STYLES)],
                        marker=_MARKERS[bi % len(_MARKERS)],
                        color=colors[b],
                        markersize=4,
                        linewidth=1.3,
                        label=f"{b} ({acc})" if (i == 0 and j == 0) else None,
                    )
                    ax.fill_between(xs, lo, hi, color=colors[b], alpha=0.12, linewidth=0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(gv[xname])
            ax.set_xticklabels([str(x) for x in gv[xname]], fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            other = "K" if panel_name == "k" else "B"
            ax.set_title(f"V={vocab}, {other}={pv}", fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("batch size B" if xname == "batch" else "draft length K")
            if j == 0:
                ax.set_ylabel("median latency (us)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    right = 1.0 - 2.6 / width
    if handles:
        fig.legend(
            handles,
            labels,
            loc="center left",
            bbox_to_anchor=(right, 0.5),
            fontsize=8,
            frameon=False,
        )
    fig.suptitle(
        f"{mode} mode, {dtype}: latency vs {'batch size' if xname == 'batch' else 'K'}\n"
        "median, IQR shaded; line style = acceptance regime",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, right, 1.0))
    path = out / f"latency_vs_{xname}_{mode}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _heatmap(
    doc,
    mode,
    out: Path,
    name: str,
    title: str,
    value,
    center_one: bool,
    skip: tuple[str, ...] = (),
    higher_is_better: bool = True,
) -> Path | None:
    _, plt = _mpl()
    from matplotlib.colors import LogNorm, TwoSlopeNorm

    wl = by_workload(doc)
    keys = sorted(
        (k for k in wl if k[0] == mode), key=lambda w: (w[1], str(w[2]), w[3], w[4], w[5])
    )
    backends = [b for b in backends_in(doc) if b not in skip]
    if not keys or not backends:
        return None
    grid = [[math.nan] * len(keys) for _ in backends]
    for j, wk in enumerate(keys):
        for i, b in enumerate(backends):
            c = wl[wk].get(b)
            if c is not None:
                v = value(wk, b, c)
                grid[i][j] = v if v is not None and v > 0 and math.isfinite(v) else math.nan
    finite = [v for row in grid for v in row if math.isfinite(v)]
    if not finite:
        return None
    import numpy as np

    data = np.array(grid, dtype=float)
    lo, hi = min(finite), max(finite)
    if center_one:
        span = max(abs(math.log10(lo)), abs(math.log10(hi)), 0.05)
        norm = TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
        shown = np.log10(data)
        cmap = "RdYlGn" if higher_is_better else "RdYlGn_r"
    else:
        norm = LogNorm(vmin=max(lo, 1e-9), vmax=max(hi, lo * 1.01))
        shown = data
        cmap = "viridis_r"
    width = min(28, max(7.0, 2.5 + 0.42 * len(keys)))
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.45 * len(backends)))
    im = ax.imshow(shown, aspect="auto", cmap=cmap, norm=norm)
    ax.set_yticks(range(len(backends)))
    ax.set_yticklabels(backends, fontsize=8)
    labels = [
        f"B{w[5]} K{w[4]} V{w[3]} {w[2]}" + ("" if w[1] == "float32" else f" {w[1]}") for w in keys
    ]
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=7)
    if len(keys) <= 64:
        for i in range(len(backends)):
            for j in range(len(keys)):
                v = data[i, j]
                if math.isfinite(v):
                    level = norm(shown[i, j])  # 0..1 along the colour map
                    dark = level < 0.15 or level > 0.85 if center_one else level > 0.75
                    label = f"{v:.0f}" if v >= 100 else f"{v:.2g}"
                    ax.text(
                        j,
                        i,
                        label,
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if dark else "black",
                    )
    cb = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    if center_one:
        from matplotlib.ticker import FuncFormatter

        cb.formatter = FuncFormatter(lambda x, _pos: f"{10**x:.2g}x")
        cb.update_ticks()
    ax.set_title(title, fontsize=10, wrap=True)
    fig.tight_layout()
    path = out / f"{name}_{mode}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_plots(doc: dict[str, Any], out_dir: str | Path) -> list[tuple[str, Path]]:
    """Write every plot for ``doc`` under ``out_dir``; return ``[(title, path), ...]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sp = speedups(doc)
    made: list[tuple[str, Path]] = []
    modes = list(dict.fromkeys(c["mode"] for c in doc.get("cells", []) if c["status"] == "ok"))
    has_baseline = any(
        c["backend"] == BASELINE and c["status"] == "ok" for c in doc.get("cells", [])
    )
    for mode in modes:
        p = _line_plot(doc, mode, out, "batch", "k")
        if p:
            made.append((f"{mode}: latency vs batch size", p))
        p = _line_plot(doc, mode, out, "k", "batch")
        if p:
            made.append((f"{mode}: latency vs draft length K", p))
        if has_baseline:
            p = _heatmap(
                doc,
                mode,
                out,
                "speedup_vs_torch_loop",
                f"{mode}: speedup vs torch-loop\n(t_loop / t; >1: faster than the loop)",
                lambda wk, b, c: sp[wk][b]["vs_baseline"],
                True,
                skip=(BASELINE,),
            )
            if p:
                made.append((f"{mode}: speedup vs torch-loop", p))
        p = _heatmap(
            doc,
            mode,
            out,
            "vs_fastest",
            f"{mode}: time / fastest other backend\n(<1: this backend is the fastest, by that margin)",
            lambda wk, b, c: sp[wk][b]["vs_fastest"],
            True,
            higher_is_better=False,
        )
        if p:
            made.append((f"{mode}: ratio to the fastest peer", p))
        p = _heatmap(
            doc,
            mode,
            out,
            "floor_ratio",
            f"{mode}: median / floor\n(floor = max(one launch, must-read bytes / copy bandwidth))",
            lambda wk, b, c: c["floor"]["ratio"],
            False,
        )
        if p:
            made.append((f"{mode}: ratio to the floor", p))
    return made
