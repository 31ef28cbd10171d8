"""The report's "End to end" section: a ``specsample.e2e/1`` document (``specsample e2e --json``)
as tables, settings and plots, in markdown and as HTML items for :mod:`.html`.

Per (vocabulary, batch) case one table, one row per backend: the columns ``specsample e2e``
prints, plus the kernel launches and host synchronizations of one verify call
(``verify_launches``, GPU runs only), so a backend that silently falls back to another path shows
it. See docs/e2e.md, "Reading the report".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specsample.decode.render import HEADERS

from .environment import describe

HEADING = "End to end"

#: the columns ``specsample e2e`` prints, then the launch counts of one verify call
COLUMNS = [*HEADERS, "kernels / verify", "syncs / verify"]

# the phases of a step, in the order of the table and the stacked bars ("other" = bookkeeping)
PHASES = (("draft", "draft"), ("target", "target"), ("verify", "verify"), ("bookkeeping", "other"))

NOTE = (
    "Speculative generation with each backend in the verify step (specsample e2e). One table per "
    "vocabulary V and batch size B, one row per backend: tokens per second with speculation and "
    "with the target alone on the same prompts, their ratio, the mean accepted draft tokens per "
    "request and step (0..K), the time per step in each phase, the verify step's share of it, and "
    "the Amdahl projection: tokens per second if the verify step were twice as fast, or free (no "
    "sampler can do better). Read the share first: it bounds what any sampler can buy here. "
    "kernels / verify and syncs / verify count one verify call's kernel launches and host "
    "synchronizations (torch.profiler, GPU runs only): a fused backend shows 1 and 0, a silent "
    "fallback shows more. The draft and target columns vary between runs (and so between rows) "
    "by more than the sampler's cost; the verify column is the sampler's own time per step, host "
    "overhead of the call included (docs/e2e.md)."
)

PLOTS_NOTE = (
    "Time per step in each phase, stacked per backend (one panel per case); and the accepted-"
    "length histogram: the fraction of request-steps that accepted 0..K draft tokens."
)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def phase_ms(case: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per step of each phase of an ``ok`` case, keyed by the phase's column name
    (``draft``, ``target``, ``verify``, ``other``)."""
    spec = case["speculative"]
    return {label: spec["phases_s"][phase] / spec["steps"] * 1e3 for phase, label in PHASES}


def _projected(case: dict[str, Any], factor: float | str) -> float | None:
    for row in case["projection"]:
        if row["factor"] == factor:
            return row["tokens_per_s"]
    return None


def case_row(case: dict[str, Any]) -> list[str]:
    """One row of :data:`COLUMNS`; a case that did not run shows its status and reason."""
    if case["status"] != "ok":
        reason = f"{case['status']}: {case.get('reason') or ''}".rstrip(": ")
        return [case["backend"], reason] + [""] * (len(COLUMNS) - 2)
    spec = case["speculative"]
    ms = phase_ms(case)
    launches = case.get("verify_launches") or {}
    share = case["verify_share"]
    return [
        case["backend"],
        _num(spec["tokens_per_s"]),
        _num(case["baseline"]["tokens_per_s"]),
        "-" if case["speedup"] is None else f"{case['speedup']:.2f}x",
        _num(spec.get("mean_accepted")),
        *(_num(ms[label]) for _, label in PHASES),
        "-" if share is None else f"{100 * share:.1f}%",
        _num(_projected(case, 2.0)),
        _num(_projected(case, "inf")),
        _count(launches.get("kernels")),
        _count(launches.get("host_syncs")),
    ]


def cases_by_shape(doc: dict[str, Any]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """The cases grouped by (vocabulary, batch), in the order the run made them."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for case in doc["cases"]:
        groups.setdefault((case["vocab"], case["batch"]), []).append(case)
    return groups


def case_table(cases: list[dict[str, Any]], fmt: str = "github") -> str:
    """The table of one (vocabulary, batch) case: ``fmt`` ``"html"`` or a tabulate format
    (``"github"``)."""
    rows = [case_row(c) for c in cases]
    if fmt == "html":
        from .html import table

        return table(COLUMNS, rows)
    from tabulate import tabulate

    return tabulate(rows, headers=COLUMNS, tablefmt=fmt, disable_numparse=True)


def _settings_line(settings: dict[str, Any]) -> str:
    parts = [
        f"K={settings['k']}",
        f"{settings['tokens']} tokens per request",
        f"prompts of {settings.get('prompt_len', '?')} tokens",
        f"{settings['mode']} mode",
        f"temperature {settings.get('temperature', 1.0):g}",
        f"seed {settings.get('seed', '?')}",
        f"device {settings['device']}",
        f"timer {settings.get('timer', '?')}",
    ]
    if settings.get("repeat", 1) > 1:
        parts.append(f"times: medians of {settings['repeat']} runs per case")
    return ", ".join(parts)


def _millions(n: Any) -> str:
    return f"{n / 1e6:.1f} M" if isinstance(n, (int, float)) else "?"


def _blocks(n: Any) -> str:
    return f"{n} block" if n == 1 else f"{n} blocks"


def model_line(model: dict[str, Any]) -> str:
    """One line describing the models of one vocabulary (a ``models`` entry of the document)."""
    if model.get("kind") == "demo":
        target = model.get("target") or {}
        return (
            f"demo {model.get('size')} (seed {model.get('seed')}), {model.get('dtype')}: target "
            f"{_blocks(target.get('n_layers'))}, d_model {target.get('d_model')}, "
            f"{_millions(model.get('target_params'))} weights per token; draft "
            f"{_blocks(model.get('draft_layers'))}, vocabulary {model.get('draft_vocab')}, "
            f"{_millions(model.get('draft_params'))} weights per token"
        )
    if model.get("kind") == "transformers":
        return (
            f"transformers, {model.get('dtype')}: target {model.get('target')} "
            f"({_millions(model.get('target_params'))} parameters), draft {model.get('draft')} "
            f"({_millions(model.get('draft_params'))} parameters)"
        )
    return ", ".join(f"{k} {v}" for k, v in model.items())


def meta_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` rows: machine, time, settings and models of an end-to-end run."""
    rows = [
        ("machine", describe(doc.get("environment") or {})),
        ("created", str(doc["created"])),
        ("settings", _settings_line(doc["settings"])),
    ]
    for vocab, model in (doc.get("models") or {}).items():
        rows.append((f"models V={vocab}", model_line(model)))
    return rows


def _meta_table(rows: list[tuple[str, str]], fmt: str) -> str:
    if fmt == "html":
        from .html import table

        return table(["", ""], [[k, v] for k, v in rows]).replace("<table>", '<table class="meta">')
    from tabulate import tabulate

    if fmt == "github":  # a "|" in a value would split the markdown cell
        rows = [(k, v.replace("|", "/")) for k, v in rows]
    return tabulate(
        [[k, v] for k, v in rows], headers=["", ""], tablefmt=fmt, disable_numparse=True
    )


def e2e_section(
    doc: dict[str, Any], plots: list[tuple[str, Path]], title: str = HEADING
) -> tuple[list[str], list[tuple[str, str]]]:
    """The section for one end-to-end document.

    Args:
        doc: a validated ``specsample.e2e/1`` document.
        plots: ``[(title, png path), ...]`` made by :func:`specsample.reports.e2e_plots.e2e_plots`
            (linked as ``plots/NAME`` from the markdown, embedded in the HTML).
        title: the section heading.

    Returns:
        ``(markdown lines, HTML items)``, the items in :func:`specsample.reports.html.render_html`'s
        ``(kind, payload)`` form.
    """
    from .html import image

    settings = doc["settings"]
    rows = meta_rows(doc)
    md = [f"## {title}", "", NOTE, "", _meta_table(rows, "github"), ""]
    items: list[tuple[str, str]] = [("text", NOTE), ("html", _meta_table(rows, "html"))]
    for (vocab, batch), cases in cases_by_shape(doc).items():
        heading = f"V={vocab} B={batch} (K={settings['k']}, {settings['mode']} mode)"
        md += [f"### {heading}", "", case_table(cases), ""]
        items += [("h3", heading), ("html", case_table(cases, "html"))]
        for case in cases:
            if case.get("matches_baseline") is False:
                text = (
                    f"{case['backend']}: the greedy output differs from target-only greedy "
                    "decoding (docs/e2e.md, Correctness)."
                )
                md += [text, ""]
                items.append(("text", text))
    if plots:
        md += [PLOTS_NOTE, ""]
        items.append(("text", PLOTS_NOTE))
    for plot_title, path in plots:
        md += [f"![{plot_title}](plots/{path.name})", ""]
        items.append(("html", image(path, plot_title)))
    return md, items


def render_e2e(
    docs: list[dict[str, Any]],
    out_dir: str | Path,
    plots: bool = True,
    on_figure: Any = None,
) -> tuple[list[str], list[tuple[str, list[tuple[str, str]]]], list[Path]]:
    """The "End to end" section(s) of a report: one per document (numbered when several).

    Args:
        docs: validated ``specsample.e2e/1`` documents.
        out_dir: the report folder; figures go to ``out_dir/plots``.
        plots: draw the figures (matplotlib); without it, or without matplotlib, tables only.
        on_figure: called as ``on_figure(figure, file_name)`` before each figure is saved.

    Returns:
        ``(markdown lines, [(heading, HTML items)], png paths written)``.
    """
    md: list[str] = []
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[Path] = []
    for n, doc in enumerate(docs):
        several = len(docs) > 1
        title = f"{HEADING} ({n + 1})" if several else HEADING
        figures: list[tuple[str, Path]] = []
        if plots:
            try:
                from .e2e_plots import e2e_plots

                suffix = f"_{n + 1}" if several else ""
                figures = e2e_plots(doc, Path(out_dir) / "plots", suffix, on_figure)
            except ImportError as exc:  # matplotlib is optional (extra "plots")
                md += [f"_plots skipped: {exc} (pip install 'specsample[plots]')_", ""]
        section_md, items = e2e_section(doc, figures, title)
        md += section_md
        sections.append((title, items))
        written += [path for _, path in figures]
    return md, sections, written
