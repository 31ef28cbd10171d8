"""matplotlib PNGs of an end-to-end document (``specsample.e2e/1``), in the style of
:mod:`.plots`: time per phase per backend (stacked bars, one panel per (vocabulary, batch) case,
the verify share written over each bar) and the accepted-length histogram per backend (one panel
per case)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .e2e_report import PHASES, cases_by_shape, phase_ms
from .plots import FigureHook, _colors, _mpl, _save

_MAX_COLUMNS = 2
# one colour per phase (matplotlib's tab10: blue, orange, red, grey), verify in red
_PHASE_COLORS = {"draft": "#1f77b4", "target": "#ff7f0e", "verify": "#d62728", "other": "#7f7f7f"}


def _ok_groups(doc: dict[str, Any]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    groups = {}
    for shape, cases in cases_by_shape(doc).items():
        ok = [c for c in cases if c["status"] == "ok"]
        if ok:
            groups[shape] = ok
    return groups


def _panels(n: int, width: float, height: float, sharey: bool):
    _, plt = _mpl()
    cols = min(n, _MAX_COLUMNS)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols + 2.6, height * rows + 1.0),
        squeeze=False,
        sharey=sharey,
        layout="constrained",
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _device(doc: dict[str, Any]) -> str:
    env = doc.get("environment") or {}
    return (env.get("gpu") or {}).get("name") or doc["settings"]["device"]


def phase_figure(
    doc: dict[str, Any], path: Path, on_figure: FigureHook | None = None
) -> Path | None:
    """Stacked bars of milliseconds per step in each phase, per backend; None without an
    ``ok`` case."""
    groups = _ok_groups(doc)
    if not groups:
        return None
    width = max(2.8, 0.75 * max(len(c) for c in groups.values()) + 1.2)
    fig, axes = _panels(len(groups), width, 3.2, sharey=False)
    for ax, ((vocab, batch), cases) in zip(axes, groups.items(), strict=True):
        xs = list(range(len(cases)))
        bottom = [0.0] * len(cases)
        per_case = [phase_ms(c) for c in cases]
        for _, label in PHASES:
            heights = [ms[label] for ms in per_case]
            ax.bar(
                xs,
                heights,
                0.65,
                bottom=bottom,
                color=_PHASE_COLORS[label],
                label=label if ax is axes[0] else None,
            )
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        for x, top, case in zip(xs, bottom, cases, strict=True):
            share = case["verify_share"]
            if share is not None:
                ax.annotate(
                    f"{100 * share:.1f}%",
                    (x, top),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.margins(y=0.14)
        ax.set_xticks(xs)
        ax.set_xticklabels([c["backend"] for c in cases], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"V={vocab}, B={batch}", fontsize=9)
        ax.set_ylabel("ms per step")
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    s = doc["settings"]
    fig.suptitle(
        f"end to end ({_device(doc)}): time per step in each phase, K={s['k']}, "
        f"{s['mode']} mode\nverify share over each bar",
        fontsize=10,
    )
    return _save(fig, path, on_figure)


def accepted_figure(
    doc: dict[str, Any], path: Path, on_figure: FigureHook | None = None
) -> Path | None:
    """Grouped bars: the fraction of request-steps that accepted 0..K draft tokens, per backend;
    None without an ``ok`` case."""
    groups = _ok_groups(doc)
    if not groups:
        return None
    k = doc["settings"]["k"]
    backends = list(dict.fromkeys(c["backend"] for cs in groups.values() for c in cs))
    colors = _colors(backends)
    width = max(3.0, 0.3 * (k + 1) * len(backends) + 1.5)
    fig, axes = _panels(len(groups), width, 3.0, sharey=True)
    bar = 0.8 / len(backends)
    for ax, ((vocab, batch), cases) in zip(axes, groups.items(), strict=True):
        for case in cases:
            counts = case["speculative"]["accepted_histogram"]
            total = sum(counts)
            if total == 0:
                continue
            i = backends.index(case["backend"])
            xs = [a - 0.4 + bar * (i + 0.5) for a in range(k + 1)]
            ax.bar(
                xs,
                [n / total for n in counts],
                bar,
                color=colors[case["backend"]],
                label=case["backend"] if ax is axes[0] else None,
            )
        ax.set_xticks(list(range(k + 1)))
        ax.set_xticklabels([str(a) for a in range(k + 1)], fontsize=8)
        ax.set_xlabel("accepted draft tokens")
        ax.set_title(f"V={vocab}, B={batch}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("fraction of request-steps")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(f"end to end ({_device(doc)}): accepted-length histogram, K={k}", fontsize=10)
    return _save(fig, path, on_figure)


def e2e_plots(
    doc: dict[str, Any],
    out_dir: str | Path,
    suffix: str = "",
    on_figure: FigureHook | None = None,
) -> list[tuple[str, Path]]:
    """Write the end-to-end figures of ``doc`` under ``out_dir``; return ``[(title, path), ...]``.

    Args:
        suffix: appended to the file names (several end-to-end documents in one report).
        on_figure: called as ``on_figure(figure, file_name)`` before each figure is saved.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    p = phase_figure(doc, out / f"e2e_phases{suffix}.png", on_figure)
    if p:
        made.append(("end to end: time per phase per backend", p))
    p = accepted_figure(doc, out / f"e2e_accepted{suffix}.png", on_figure)
    if p:
        made.append(("end to end: accepted-length histogram", p))
    return made
