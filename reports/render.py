"""Render results (and optionally conformance) into a report folder.

``DIR/report.md`` (markdown tables, plots linked), ``DIR/report.html`` (one self-contained page),
``DIR/results.csv`` (one row per cell), ``DIR/conformance.csv`` and ``DIR/plots/*.png``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from . import explain as X
from . import tables as T
from .environment import describe


def _meta(doc: dict[str, Any], conf: dict[str, Any] | None) -> list[tuple[str, str]]:
    env = doc.get("environment", {})
    dev = doc.get("device", {})
    cfg = doc.get("config", {})
    pol = cfg.get("policy", {})
    rows = [
        ("machine", describe(env)),
        ("host", f"{env.get('host')} ({env.get('platform')})"),
        ("created", str(doc.get("created"))),
        ("command", " ".join(doc.get("command", []))),
        ("grid", ", ".join(f"{k}={','.join(map(str, v))}" for k, v in cfg.get("grid", {}).items())),
        (
            "timing",
            f"{'CUDA events' if dev.get('type') == 'cuda' else 'perf_counter'}, "
            f"cache: {pol.get('l2')}, median of >= {pol.get('min_samples')} calls, "
            f"budget {pol.get('budget_s')} s/cell for slow baselines",
        ),
    ]
    if dev.get("copy_bandwidth_Bps"):
        rows.append(
            ("copy bandwidth", f"{dev['copy_bandwidth_Bps'] / 1e9:.1f} GB/s (read + write)")
        )
    if dev.get("launch_floor_s") is not None:
        rows.append(("one-launch floor", T.fmt_time(dev["launch_floor_s"])))
    state = (
        "interrupted (partial)"
        if doc.get("interrupted")
        else ("complete" if doc.get("complete") else "partial")
    )
    rows.append(("state", f"{state}, {len(doc.get('cells', []))} cells"))
    if conf is not None:
        rows.append(("conformance", f"level {conf.get('level')}, {conf.get('created')}"))
    unavailable = {
        b: e.get("reason") for b, e in doc.get("backends", {}).items() if not e.get("available")
    }
    if unavailable:
        rows.append(("not available", "; ".join(f"{b}: {r}" for b, r in unavailable.items())))
    return rows


def _headline(
    doc: dict[str, Any], plot_list: list[tuple[str, Path]], md: list[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """The headline section: markdown lines appended to ``md`` and the HTML items for the top of
    the page (figure first)."""
    from .headline import headline, headline_table
    from .html import image

    h = headline(doc)
    if h.empty:
        return md, []
    note = X.headline(doc, bool(h.third_party))
    legend = "Each cell: speedup over torch-loop" + (
        " / over the fastest peer" if h.third_party else ""
    )
    md = md + ["## Headline", "", note, ""]
    items: list[tuple[str, str]] = [("h2", "Headline")]
    fig = [p for t, p in plot_list if t == "headline"]
    if fig:
        md += [f"![headline](plots/{fig[0].name})", ""]
        items.append(("html", image(fig[0], "headline: speedup per backend", "headline")))
    items.append(("text", note))
    md += [legend + ".", "", headline_table(h), ""]
    items += [("text", legend + "."), ("html", headline_table(h, fmt="html"))]
    return md, items


def _conformance_csv(conf: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["backend", "available", "check", "outcome", "duration_s", "details"])
    for b, entry in conf.get("backends", {}).items():
        checks = entry.get("checks") or {}
        if not checks:
            w.writerow([b, entry.get("available"), "", "", "", entry.get("reason", "")])
        for name, res in checks.items():
            w.writerow(
                [
                    b,
                    entry.get("available"),
                    name,
                    res.get("outcome"),
                    res.get("duration_s"),
                    str(res.get("details", ""))[:500],
                ]
            )
    return buf.getvalue()


def render_report(
    doc: dict[str, Any] | None,
    conf: dict[str, Any] | None,
    out_dir: str | Path,
    plots: bool = True,
    on_figure: Any = None,
    e2e: list[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write the report; return ``{"markdown", "html", "csv", "plots_dir", ...}`` paths.

    Either document may be None (a conformance-only or benchmark-only report). ``e2e``: end-to-end
    documents (``specsample.e2e/1``), each rendered as an "End to end" section
    (:mod:`specsample.reports.e2e_report`). The headline
    (figure and table) opens both pages; every section starts with how to read it.
    ``on_figure(figure, file_name)`` is called before each plot is saved (see
    :func:`specsample.reports.plots.render_plots`).
    """
    from .html import conformance_html, image, render_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    md: list[str] = ["# specsample report", ""]
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    if doc is not None:
        meta = _meta(doc, conf)
    elif conf is not None:
        meta = [("conformance", str(conf.get("created")))]
    else:
        meta = [("end to end", ", ".join(str(d.get("created")) for d in e2e or []))]
    meta_md = ["| | |", "|---|---|"]
    meta_md += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in meta] + [""]

    plot_list: list[tuple[str, Path]] = []
    lead: list[tuple[str, str]] = []
    if doc is not None and plots:
        try:
            from .plots import render_plots

            plot_list = render_plots(doc, out / "plots", on_figure=on_figure)
        except ImportError as exc:  # matplotlib is optional (extra "plots")
            md += [f"_plots skipped: {exc} (pip install 'specsample[plots]')_", ""]
    if doc is not None:
        md, lead = _headline(doc, plot_list, md)
    md += meta_md
    if doc is not None:
        md += ["## Summary", "", X.summary(doc), "", T.summary_table(doc), ""]
        items = [("text", X.summary(doc)), ("html", T.summary_table(doc, fmt="html"))]
        if (doc.get("device") or {}).get("type") == "cpu":
            md += [X.CPU_NOTE, ""]
            items.append(("text", X.CPU_NOTE))
        sections.append(("Summary", items))
    if conf is not None:
        headers, rows = T.conformance_matrix(conf)
        md += [
            "## Conformance (check x backend)",
            "",
            X.conformance(conf.get("level")),
            "",
            T.conformance_table(conf),
            "",
        ]
        sections.append(
            (
                "Conformance (check x backend)",
                [
                    ("text", X.conformance(conf.get("level"))),
                    ("html", conformance_html(headers, rows)),
                ],
            )
        )
        (out / "conformance.csv").write_text(_conformance_csv(conf), encoding="utf-8")
        written["conformance_csv"] = out / "conformance.csv"
    if doc is not None:
        modes = list(dict.fromkeys(c["mode"] for c in doc.get("cells", [])))
        for mode in modes:
            items: list[tuple[str, str]] = []
            md += [f"## {mode} mode", ""]
            blocks = [
                (X.median_heading(doc), None, X.median(doc)),
                ("CUDA-graph replay (median)", "graph", X.graph()),
                (X.WALL_HEADING, "wall", X.wall(doc)),
                ("Speedup vs torch-loop", "speedup", X.speedup()),
                ("Time / fastest other backend", "vs_fastest", X.vs_fastest()),
                ("Ratio to the floor", "floor", X.floor()),
                (
                    "Achieved bandwidth (must-read bytes / median) as % of copy bandwidth",
                    "bandwidth",
                    X.bandwidth(),
                ),
                ("Kernel launches / host syncs per call", "launches", X.launches()),
                ("Default call / kernel-only call", "kernel_only", X.kernel_only()),
                (
                    "Mean acceptance length: measured (expected for the workload)",
                    "length",
                    X.length(),
                ),
            ]
            mode_cells = [c for c in T.ok_cells(doc) if c["mode"] == mode]
            has_launches = any(c.get("launches") for c in mode_cells)
            has_graph = any(c.get("graph") for c in mode_cells)
            has_kernel_only = any(c.get("kernel_only") for c in mode_cells)
            alone = T.single_backend(doc)
            has_loop = any(c["backend"] == T.BASELINE for c in mode_cells)
            for heading, metric, note in blocks:
                if (
                    (metric == "launches" and not has_launches)
                    or (metric == "graph" and not has_graph)
                    or (metric == "kernel_only" and not has_kernel_only)
                ):
                    continue
                if metric == "speedup" and not has_loop and not alone:
                    continue  # no torch-loop cells: nothing to divide by
                if metric in ("speedup", "vs_fastest") and alone:
                    if metric == "speedup":  # one note for both comparisons
                        text = f"{T.ONLY_ONE_BACKEND} in this report: nothing to compare with."
                        md += ["### Comparisons between backends", "", text, ""]
                        items += [("h3", "Comparisons between backends"), ("text", text)]
                    continue
                if metric is None:
                    md_t, html_t = (T.latency_table(doc, mode, fmt=f) for f in ("github", "html"))
                else:
                    md_t, html_t = (
                        T.metric_table(doc, mode, metric, fmt=f) for f in ("github", "html")
                    )
                md += [f"### {heading}", "", note, "", md_t, ""]
                items += [("h3", heading), ("text", note), ("html", html_t)]
            rules_md = T.rule_table(doc, mode)
            if rules_md is not None:
                heading = "Verification rules: tokens per call"
                note = (
                    "Mean emitted tokens per call (accepted drafts + 1), measured on the warm-up "
                    "calls, and the median latency, for each rule on the same workload; the gain "
                    "is the rule's tokens per call minus token-wise verification's (docs/rules.md)."
                )
                md += [f"### {heading}", "", note, "", rules_md, ""]
                items += [
                    ("h3", heading),
                    ("text", note),
                    ("html", T.rule_table(doc, mode, "html")),
                ]
            mode_plots = [(t, p) for t, p in plot_list if t.startswith(f"{mode}:")]
            if mode_plots:
                md += [X.plots_note(), ""]
                items.append(("text", X.plots_note()))
            for title, path in mode_plots:
                md += [f"![{title}](plots/{path.name})", ""]
                items.append(("html", image(path, title)))
            sections.append((f"{mode} mode", items))
        (out / "results.csv").write_text(T.to_csv(T.flat_rows(doc)), encoding="utf-8")
        written["csv"] = out / "results.csv"
    e2e_pngs: list[Path] = []
    if e2e:
        from .e2e_report import render_e2e

        e2e_md, e2e_sections, e2e_pngs = render_e2e(e2e, out, plots=plots, on_figure=on_figure)
        md += e2e_md
        sections += e2e_sections
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    written["markdown"] = out / "report.md"
    page = render_html("specsample report", meta, sections, lead=lead)
    (out / "report.html").write_text(page, encoding="utf-8")
    written["html"] = out / "report.html"
    if plot_list or e2e_pngs:
        written["plots_dir"] = out / "plots"
    return written
