"""Render results (and optionally conformance) into a report folder.

``DIR/report.md`` (markdown tables, plots linked), ``DIR/report.html`` (one self-contained page),
``DIR/results.csv`` (one row per cell), ``DIR/conformance.csv`` and ``DIR/plots/*.png``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from . import tables as T
from .environment import describe

DOC_NOTE = (
    "Times are medians over many calls (IQR shown as ±half-IQR); GPU: device time from CUDA "
    "events (a spin kernel hides the host's launch overhead), warm-up excluded, L2 flushed "
    "between calls; CPU: perf_counter. '*' marks a cell capped by its time "
    "budget; 'n/c' a cell the backend does not claim. Floor = max(one trivial kernel launch, "
    "must-read bytes / copy bandwidth measured in the same run). See docs/benchmarks.md."
)


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
) -> dict[str, Path]:
    """Write the report; return ``{"markdown", "html", "csv", "plots_dir", ...}`` paths.

    Either document may be None (a conformance-only or benchmark-only report).
    """
    from .html import conformance_html, image, render_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    md: list[str] = ["# specsample report", ""]
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    meta = _meta(doc, conf) if doc is not None else [("conformance", str(conf.get("created")))]
    md += ["| | |", "|---|---|"] + [f"| {k} | {str(v).replace('|', '/')} |" for k, v in meta] + [""]

    plot_list: list[tuple[str, Path]] = []
    if doc is not None and plots:
        try:
            from .plots import render_plots

            plot_list = render_plots(doc, out / "plots")
        except ImportError as exc:  # matplotlib is optional (extra "plots")
            md += [f"_plots skipped: {exc} (pip install 'specsample[plots]')_", ""]
    if doc is not None:
        md += ["## Summary", "", T.summary_table(doc), "", DOC_NOTE, ""]
        sections.append(
            ("Summary", [("html", T.summary_table(doc, fmt="html")), ("text", DOC_NOTE)])
        )
    if conf is not None:
        headers, rows = T.conformance_matrix(conf)
        md += [
            "## Conformance (check x backend)",
            "",
            f"Level `{conf.get('level')}`. pass / FAIL / n/c (not claimed) / ERROR.",
            "",
            T.conformance_table(conf),
            "",
        ]
        sections.append(
            (
                "Conformance (check x backend)",
                [
                    ("text", f"Level {conf.get('level')}; pass, FAIL, n/c = not claimed, ERROR."),
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
                ("Median latency", None),
                ("CUDA-graph replay (median)", "graph"),
                (
                    "Eager wall-clock latency: host + device, synchronized (median of the warm-up "
                    "calls)",
                    "wall",
                ),
                ("Speedup vs torch-loop", "speedup"),
                ("Time / fastest other backend", "vs_fastest"),
                ("Ratio to the floor", "floor"),
                (
                    "Achieved bandwidth (must-read bytes / median) as % of copy bandwidth",
                    "bandwidth",
                ),
                ("Kernel launches / host syncs per call", "launches"),
                ("Mean acceptance length: measured (expected for the workload)", "length"),
            ]
            mode_cells = [c for c in T.ok_cells(doc) if c["mode"] == mode]
            has_launches = any(c.get("launches") for c in mode_cells)
            has_graph = any(c.get("graph") for c in mode_cells)
            for heading, metric in blocks:
                if (metric == "launches" and not has_launches) or (
                    metric == "graph" and not has_graph
                ):
                    continue
                if metric is None:
                    md_t, html_t = (T.latency_table(doc, mode, fmt=f) for f in ("github", "html"))
                else:
                    md_t, html_t = (
                        T.metric_table(doc, mode, metric, fmt=f) for f in ("github", "html")
                    )
                md += [f"### {heading}", "", md_t, ""]
                items += [("h3", heading), ("html", html_t)]
            for title, path in plot_list:
                if title.startswith(f"{mode}:"):
                    md += [f"![{title}](plots/{path.name})", ""]
                    items.append(("html", image(path, title)))
            sections.append((f"{mode} mode", items))
        (out / "results.csv").write_text(T.to_csv(T.flat_rows(doc)), encoding="utf-8")
        written["csv"] = out / "results.csv"
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    written["markdown"] = out / "report.md"
    page = render_html("specsample report", meta, sections)
    (out / "report.html").write_text(page, encoding="utf-8")
    written["html"] = out / "report.html"
    if plot_list:
        written["plots_dir"] = out / "plots"
    return written
