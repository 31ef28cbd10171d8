"""matplotlib PNGs of a results document (Agg backend; matplotlib is imported only here, lazily).

The headline figure (see :mod:`.headline`); per mode: latency vs batch and vs K per backend (log
axes; an axis with a single value in the grid gets no plot), speedup heatmaps vs torch-loop and vs
the fastest other backend (not with a single backend), and each backend's ratio to the floor.
Every figure uses matplotlib's constrained layout; :func:`layout_problems` finds clipped or
overlapping text in a drawn figure (the tests run it on every figure).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .tables import (
    BASELINE,
    NOISY_MARK,
    backends_in,
    by_workload,
    fmt_ratio,
    is_noisy,
    single_backend,
    speedups,
)

FigureHook = Callable[[Any, str], None]

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


def layout_problems(fig: Any, tolerance_px: float = 1.0) -> list[str]:
    """Text of a figure that is cut by its edges, or tick labels of one axis that overlap.

    Draws the figure (Agg) and compares window extents in pixels: every visible, non-empty text
    (titles, labels, tick labels, legend and colour-bar text, cell annotations) must lie inside
    the figure; the tick labels of each axis must not overlap one another.
    """
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fb = fig.bbox
    problems = []
    # matplotlib keeps label objects for ticks outside the view; they are not drawn.
    shown: dict[Any, list[Any]] = {}
    hidden: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(abs(hi - lo), 1e-300)
            shown[axis] = []
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = tick.get_loc()
                labels = (tick.label1, tick.label2)
                if loc is None or not lo - eps <= loc <= hi + eps or not tick.get_visible():
                    hidden.update(id(label) for label in labels)
                else:
                    shown[axis] += [
                        label for label in labels if label.get_visible() and label.get_text()
                    ]
    for t in fig.findobj(Text):
        if id(t) in hidden or not t.get_visible() or not t.get_text().strip():
            continue
        bb = t.get_window_extent(renderer)
        if (
            bb.x0 < fb.x0 - tolerance_px
            or bb.y0 < fb.y0 - tolerance_px
            or bb.x1 > fb.x1 + tolerance_px
            or bb.y1 > fb.y1 + tolerance_px
        ):
            problems.append(f"text {t.get_text()!r} outside the figure ({bb} vs {fb})")
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [(lab.get_text(), lab.get_window_extent(renderer)) for lab in shown[axis]]
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    a, b = boxes[i][1], boxes[j][1]
                    overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
                    overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
                    if overlap_x > tolerance_px and overlap_y > tolerance_px:
                        problems.append(
                            f"tick labels {boxes[i][0]!r} and {boxes[j][0]!r} overlap "
                            f"({ax.get_title() or ax.get_ylabel() or 'axes'})"
                        )
    return problems


def _save(fig: Any, path: Path, on_figure: FigureHook | None) -> Path:
    _, plt = _mpl()
    if on_figure is not None:
        on_figure(fig, path.name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _line_plot(
    doc, mode, out: Path, xname: str, panel_name: str, on_figure: FigureHook | None = None
) -> Path | None:
    """Median latency vs ``xname`` (batch or k); panels over vocab (rows) x ``panel_name``.

    None when the grid has fewer than two values of ``xname`` (a line of one point says nothing).
    """
    _, plt = _mpl()
    gv = _grid_values(doc, mode)
    if len(gv[xname]) < 2:
        return None
    backends = backends_in(doc)
    colors = _colors(backends)
    dtype = gv["dtype"][0]
    rows, cols = gv["vocab"], gv[panel_name]
    width = 3.4 * len(cols) + 3.2
    fig, axes = plt.subplots(
        len(rows),
        len(cols),
        figsize=(width, 2.9 * len(rows) + 1.0),
        squeeze=False,
        sharey=True,
        layout="constrained",
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
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(
        f"{mode} mode, {dtype}: latency vs {'batch size' if xname == 'batch' else 'K'}\n"
        "median, IQR shaded; line style = acceptance regime",
        fontsize=10,
    )
    return _save(fig, out / f"latency_vs_{xname}_{mode}.png", on_figure)


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
    unit: str = "",
    on_figure: FigureHook | None = None,
) -> Path | None:
    _, plt = _mpl()
    from matplotlib.colors import LogNorm, TwoSlopeNorm

    wl = by_workload(doc)
    keys = sorted(
        (k for k in wl if k[0] == mode), key=lambda w: (w[1], str(w[2]), w[3], w[4], w[5])
    )
    measured = {b for k in keys for b in wl[k]}
    backends = [b for b in backends_in(doc) if b not in skip and b in measured]
    if not keys or not backends:
        return None
    grid = [[math.nan] * len(keys) for _ in backends]
    noisy = {
        (i, j)
        for j, wk in enumerate(keys)
        for i, b in enumerate(backends)
        if b in wl[wk] and is_noisy(wl[wk][b])
    }
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
    width = min(28, max(7.5, 3.0 + 0.42 * len(keys)))
    # Room for the two-line title and the rotated workload labels (about 1.6 in) at any backend
    # count, so a single-backend heatmap is not cut.
    fig, ax = plt.subplots(figsize=(width, 2.9 + 0.45 * len(backends)), layout="constrained")
    im = ax.imshow(shown, aspect="auto", cmap=cmap, norm=norm)
    ax.set_yticks(range(len(backends)))
    ax.set_yticklabels(backends, fontsize=8)
    labels = [
        f"B{w[5]} K{w[4]} V{w[3]} {w[2]}" + ("" if w[1] == "float32" else f" {w[1]}") for w in keys
    ]
    ax.set_xticks(range(len(keys)))
    # Vertical labels: their boxes are exact, so neighbours never overlap (a slanted label's
    # box reaches over its neighbour's).
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    if len(keys) <= 64:
        for i in range(len(backends)):
            for j in range(len(keys)):
                v = data[i, j]
                if math.isfinite(v):
                    level = norm(shown[i, j])  # 0..1 along the colour map
                    dark = level < 0.15 or level > 0.85 if center_one else level > 0.75
                    label = f"{v:.0f}" if v >= 100 else f"{v:.2g}"
                    label = (NOISY_MARK if (i, j) in noisy else "") + label
                    ax.text(
                        j,
                        i,
                        label,
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if dark else "black",
                    )
    cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    cb.ax.tick_params(labelsize=7)
    if unit:
        cb.set_label(unit, fontsize=8)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if center_one:
        # Decades (every other one past eight), with 2x, 3x and their inverses on a short bar:
        # evenly spread labels that cannot crowd.
        vmin, vmax = norm.vmin, norm.vmax
        decades = list(range(math.ceil(vmin - 1e-9), math.floor(vmax + 1e-9) + 1))
        if len(decades) > 8:
            decades = [e for e in decades if e % 2 == 0]
        ticks = [float(e) for e in decades]
        if vmax - vmin < 2.5:
            ticks += [math.log10(v) for v in (1 / 3, 1 / 2, 2, 3)]
        cb.set_ticks(sorted(t for t in ticks if vmin <= t <= vmax))
        cb.ax.yaxis.set_minor_locator(NullLocator())
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{round(10**x, 6):g}x"))
    else:
        # A handful of labelled ticks (1-2-5 per decade as room allows), no minor labels that
        # would overlap on a short bar.
        vmin, vmax = norm.vmin, norm.vmax
        decades = math.log10(vmax) - math.log10(vmin)
        steps = (1, 2, 5) if decades < 1.5 else (1,)
        ticks = [
            m * 10.0**e
            for e in range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
            for m in steps
            if vmin <= m * 10.0**e <= vmax
        ]
        if len(ticks) < 2:
            ticks = [vmin, vmax]
        cb.ax.yaxis.set_major_locator(FixedLocator(ticks))
        cb.ax.yaxis.set_minor_locator(NullLocator())
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:.3g}x"))
    ax.set_title(title, fontsize=10)
    return _save(fig, out / f"{name}_{mode}.png", on_figure)


def headline_figure(doc: dict[str, Any], out_dir: str | Path, on_figure: FigureHook | None = None):
    """The headline figure (``headline.png``): grouped horizontal bars, one group per headline
    shape, one bar per backend, speedup over torch-loop (log axis) and, with third-party
    backends installed, a second panel of the speedup over the fastest of them. None when there
    is nothing to show (no torch-loop cells, or no backend besides it)."""
    from .headline import headline, shape_label

    h = headline(doc)
    if h.empty:
        return None
    _, plt = _mpl()
    colors = _colors(backends_in(doc))
    panels = [("speedup over torch-loop (t_loop / t)", h.vs_loop)]
    if h.third_party:
        panels.append(("speedup over the fastest third-party backend", h.vs_third_party))
    n_shapes, n_b = len(h.shapes), len(h.backends)
    height = 1.4 + n_shapes * (0.22 * n_b + 0.35)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(6.2 * len(panels) + 2.4, height),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    bar_h = 0.8 / max(n_b, 1)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        finite = [v for v in values.values() if math.isfinite(v) and v > 0]
        for bi, b in enumerate(h.backends):
            for si, shape in enumerate(h.shapes):
                y = si + (bi - (n_b - 1) / 2) * bar_h
                v = values.get((shape, b), math.nan)
                if (shape, b) in h.noisy:
                    ax.text(1.0, y, " noisy", va="center", ha="left", fontsize=6.5, color="#777")
                    continue
                if not (math.isfinite(v) and v > 0):
                    continue
                # Bars start at 1x (no change) and end at the ratio, on either side.
                ax.barh(
                    y,
                    abs(v - 1.0),
                    left=min(v, 1.0),
                    height=bar_h * 0.9,
                    color=colors[b],
                    label=b if si == 0 else None,
                )
                ax.text(
                    v,
                    y,
                    f" {fmt_ratio(v)} " if v >= 1 else f" {fmt_ratio(v, 2)} ",
                    va="center",
                    ha="left" if v >= 1 else "right",
                    fontsize=6.5,
                )
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="#333", linewidth=0.8)
        if finite:
            lo, hi = min(min(finite), 1.0), max(max(finite), 1.0)
            ax.set_xlim(lo / 2.5, hi * 2.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x (log scale; right of 1x: faster)", fontsize=8)
        ax.grid(True, axis="x", which="major", alpha=0.3)
        ax.tick_params(labelsize=7.5)
    axes[0][0].set_yticks(range(n_shapes))
    axes[0][0].set_yticklabels([shape_label(s) for s in h.shapes])
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    dev = (doc.get("device") or {}).get("name") or (doc.get("device") or {}).get("type", "")
    fig.suptitle(f"specsample headline: speedup per backend ({dev})", fontsize=10)
    return _save(fig, Path(out_dir) / "headline.png", on_figure)


def render_plots(
    doc: dict[str, Any], out_dir: str | Path, on_figure: FigureHook | None = None
) -> list[tuple[str, Path]]:
    """Write every plot for ``doc`` under ``out_dir``; return ``[(title, path), ...]``, the
    headline figure first (title ``"headline"``).

    Args:
        on_figure: called as ``on_figure(figure, file_name)`` before each figure is saved (the
            tests check its layout with :func:`layout_problems`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sp = speedups(doc)
    made: list[tuple[str, Path]] = []
    p = headline_figure(doc, out, on_figure)
    if p:
        made.append(("headline", p))
    modes = list(dict.fromkeys(c["mode"] for c in doc.get("cells", []) if c["status"] == "ok"))
    has_baseline = any(
        c["backend"] == BASELINE and c["status"] == "ok" for c in doc.get("cells", [])
    )
    alone = single_backend(doc)
    for mode in modes:
        p = _line_plot(doc, mode, out, "batch", "k", on_figure)
        if p:
            made.append((f"{mode}: latency vs batch size", p))
        p = _line_plot(doc, mode, out, "k", "batch", on_figure)
        if p:
            made.append((f"{mode}: latency vs draft length K", p))
        if has_baseline and not alone:
            p = _heatmap(
                doc,
                mode,
                out,
                "speedup_vs_torch_loop",
                f"{mode}: speedup vs torch-loop\n(t_loop / t; >1: faster than the loop)",
                lambda wk, b, c: sp[wk][b]["vs_baseline"],
                True,
                skip=(BASELINE,),
                unit="speedup vs torch-loop (x, log scale)",
                on_figure=on_figure,
            )
            if p:
                made.append((f"{mode}: speedup vs torch-loop", p))
        if not alone:
            p = _heatmap(
                doc,
                mode,
                out,
                "vs_fastest",
                f"{mode}: time / fastest other backend\n"
                "(<1: this backend is the fastest, by that margin)",
                lambda wk, b, c: sp[wk][b]["vs_fastest"],
                True,
                higher_is_better=False,
                unit="time / fastest other (x, log scale)",
                on_figure=on_figure,
            )
            if p:
                made.append((f"{mode}: ratio to the fastest other backend", p))
        p = _heatmap(
            doc,
            mode,
            out,
            "floor_ratio",
            f"{mode}: median / floor\n(floor = max(one launch, must-read bytes / copy bandwidth))",
            lambda wk, b, c: c["floor"]["ratio"],
            False,
            unit="median / floor (x, log scale)",
            on_figure=on_figure,
        )
        if p:
            made.append((f"{mode}: ratio to the floor", p))
    return made
