"""Tables from results: flat rows (CSV), markdown tables (tabulate) and the terminal summary."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .schema import cell_key
from .stats import geometric_mean

BASELINE = "torch-loop"
CONFORMANCE_MARKS = {"pass": "pass", "fail": "FAIL", "not-claimed": "n/c", "error": "ERROR"}


def fmt_time(seconds: float | None) -> str:
    """Seconds as a short string in us or ms (three significant digits)."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "-"
    us = seconds * 1e6
    if us < 1000:
        return f"{us:.3g} us"
    if us < 1e6:
        return f"{us / 1000:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_ratio(x: float | None, digits: int = 3) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}x"


def ok_cells(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in doc.get("cells", []) if c.get("status") == "ok"]


def backends_in(doc: dict[str, Any]) -> list[str]:
    """Backends with at least one cell, in the order of the results' backend table."""
    seen = {c["backend"] for c in doc.get("cells", [])}
    order = [b for b in doc.get("backends", {}) if b in seen]
    return order + sorted(seen - set(order))


def _workload_key(cell: dict[str, Any]) -> tuple:
    return (cell["mode"], cell["dtype"], cell["accept"], cell["vocab"], cell["k"], cell["batch"])


def by_workload(doc: dict[str, Any]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """``{(mode, dtype, accept, vocab, k, batch): {backend: cell}}`` over ok cells."""
    out: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for c in ok_cells(doc):
        out[_workload_key(c)][c["backend"]] = c
    return out


def speedups(doc: dict[str, Any]) -> dict[tuple, dict[str, dict[str, float]]]:
    """Per workload and backend: ``{"vs_baseline": t_loop / t, "vs_fastest": t / t_fastest_peer}``.

    ``vs_fastest`` divides by the fastest *other* backend in the same workload: below 1 this backend
    is the fastest of all, by that margin.
    """
    out: dict[tuple, dict[str, dict[str, float]]] = {}
    for wk, cells in by_workload(doc).items():
        times = {b: c["timing"]["median"] for b, c in cells.items()}
        base = times.get(BASELINE)
        row = {}
        for b, t in times.items():
            peers = [v for k, v in times.items() if k != b]
            best_peer = min(peers) if peers else math.nan
            row[b] = {
                "vs_baseline": base / t if base and t else math.nan,
                "vs_fastest": t / best_peer if peers else 1.0,
            }
        out[wk] = row
    return out


CSV_FIELDS = [
    "backend",
    "mode",
    "dtype",
    "batch",
    "k",
    "vocab",
    "accept",
    "status",
    "reason",
    "capped",
    "median_s",
    "q1_s",
    "q3_s",
    "iqr_s",
    "mean_s",
    "n",
    "method",
    "l2",
    "wall_median_s",
    "host_enqueue_s",
    "gpu_delay_s",
    "graph_median_s",
    "kernels_per_call",
    "host_syncs_per_call",
    "torch_syncs_per_call",
    "requested_length",
    "expected_length",
    "measured_length",
    "measured_reject_fraction",
    "must_read_bytes",
    "achieved_GBps",
    "fraction_of_copy",
    "floor_s",
    "floor_bound",
    "ratio_to_floor",
    "speedup_vs_torch_loop",
    "ratio_to_fastest_peer",
]


def flat_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per cell (every status), with the :data:`CSV_FIELDS` columns."""
    sp = speedups(doc)
    rows = []
    for c in doc.get("cells", []):
        t = c.get("timing") or {}
        g = c.get("graph") or {}
        la = c.get("launches") or {}
        acc = c.get("acceptance") or {}
        fl = c.get("floor") or {}
        bw = c.get("bandwidth") or {}
        s = sp.get(_workload_key(c), {}).get(c["backend"], {}) if c.get("status") == "ok" else {}
        rows.append(
            {
                "backend": c["backend"],
                "mode": c["mode"],
                "dtype": c["dtype"],
                "batch": c["batch"],
                "k": c["k"],
                "vocab": c["vocab"],
                "accept": c["accept"],
                "status": c["status"],
                "reason": c.get("reason", ""),
                "capped": c.get("capped", ""),
                "median_s": t.get("median"),
                "q1_s": t.get("q1"),
                "q3_s": t.get("q3"),
                "iqr_s": t.get("iqr"),
                "mean_s": t.get("mean"),
                "n": t.get("n"),
                "method": t.get("method"),
                "l2": t.get("l2"),
                "wall_median_s": (t.get("wall") or {}).get("median"),
                "host_enqueue_s": t.get("host_enqueue_s"),
                "gpu_delay_s": t.get("gpu_delay_s"),
                "graph_median_s": g.get("median") if g.get("status") == "ok" else None,
                "kernels_per_call": la.get("kernels"),
                "host_syncs_per_call": la.get("host_syncs"),
                "torch_syncs_per_call": la.get("torch_syncs"),
                "requested_length": acc.get("requested_length"),
                "expected_length": acc.get("expected_length"),
                "measured_length": acc.get("measured_length"),
                "measured_reject_fraction": acc.get("measured_reject_fraction"),
                "must_read_bytes": (c.get("bytes") or {}).get("must_read"),
                "achieved_GBps": bw["achieved_Bps"] / 1e9 if bw.get("achieved_Bps") else None,
                "fraction_of_copy": bw.get("fraction_of_copy"),
                "floor_s": fl.get("floor_s"),
                "floor_bound": fl.get("bound"),
                "ratio_to_floor": fl.get("ratio"),
                "speedup_vs_torch_loop": s.get("vs_baseline"),
                "ratio_to_fastest_peer": s.get("vs_fastest"),
            }
        )
    return rows


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _workload_label_cols(wk: tuple) -> list[Any]:
    mode, dtype, accept, vocab, k, batch = wk
    return [dtype, accept, vocab, k, batch]


def latency_table(doc: dict[str, Any], mode: str, fmt: str = "github") -> str:
    """Median latency (and IQR) per workload (rows) and backend (columns) for one mode."""
    from tabulate import tabulate

    backends = backends_in(doc)
    cells_by_key = {cell_key(c): c for c in doc.get("cells", [])}
    rows = []
    for wk in sorted(
        {_workload_key(c) for c in doc.get("cells", []) if c["mode"] == mode},
        key=lambda w: (w[1], str(w[2]), w[3], w[4], w[5]),
    ):
        _, dtype, accept, vocab, k, batch = wk
        row = _workload_label_cols(wk)
        for b in backends:
            c = cells_by_key.get((b, mode, dtype, batch, k, vocab, accept))
            if c is None:
                row.append("")
            elif c["status"] == "ok":
                t = c["timing"]
                mark = "*" if c.get("capped") else ""
                row.append(f"{fmt_time(t['median'])} ±{fmt_time(t['iqr'] / 2)}{mark}")
            elif c["status"] == "skipped":
                row.append("n/c")
            else:
                row.append("error")
        rows.append(row)
    headers = ["dtype", "accept", "V", "K", "B", *backends]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def metric_table(doc: dict[str, Any], mode: str, metric: str, fmt: str = "github") -> str:
    """A per-workload x backend table of ``metric``: ``speedup``, ``vs_fastest``, ``floor``,
    ``bandwidth``, ``launches``, ``wall`` (eager wall-clock latency), ``graph`` (CUDA-graph replay)
    or ``length`` (measured mean acceptance length)."""
    from tabulate import tabulate

    backends = backends_in(doc)
    sp = speedups(doc)
    rows = []
    for wk, cells in sorted(
        by_workload(doc).items(),
        key=lambda kv: (kv[0][1], str(kv[0][2]), kv[0][3], kv[0][4], kv[0][5]),
    ):
        if wk[0] != mode:
            continue
        row = _workload_label_cols(wk)
        for b in backends:
            c = cells.get(b)
            if c is None:
                row.append("")
                continue
            if metric == "speedup":
                row.append(fmt_ratio(sp[wk][b]["vs_baseline"]))
            elif metric == "vs_fastest":
                row.append(fmt_ratio(sp[wk][b]["vs_fastest"]))
            elif metric == "floor":
                row.append(fmt_ratio(c["floor"]["ratio"]))
            elif metric == "bandwidth":
                f = c["bandwidth"]["fraction_of_copy"]
                row.append(f"{100 * f:.3g}%" if f == f else "-")
            elif metric == "launches":
                la = c.get("launches") or {}
                k_ = la.get("kernels")
                s_ = la.get("host_syncs")
                row.append("-" if k_ is None else f"{k_:g} / {s_:g}")
            elif metric == "wall":
                w = (c["timing"].get("wall") or {}).get("median")
                row.append(fmt_time(w))
            elif metric == "graph":
                g = c.get("graph") or {}
                row.append(
                    fmt_time(g.get("median")) if g.get("status") == "ok" else g.get("status", "-")
                )
            elif metric == "length":
                acc = c["acceptance"]
                row.append(f"{acc['measured_length']:.3g} ({acc['expected_length']:.3g})")
            else:
                raise ValueError(f"unknown metric {metric!r}")
        rows.append(row)
    headers = ["dtype", "accept", "V", "K", "B", *backends]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def backend_summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per backend: cells run/skipped/errored, geometric-mean speedup vs torch-loop and ratio to
    the floor, fastest and slowest median, kernel launches and host syncs per call."""
    sp = speedups(doc)
    out = []
    for b in backends_in(doc):
        cells = [c for c in doc["cells"] if c["backend"] == b]
        ok = [c for c in cells if c["status"] == "ok"]
        launches = sorted({(c.get("launches") or {}).get("kernels") for c in ok} - {None})
        syncs = sorted({(c.get("launches") or {}).get("host_syncs") for c in ok} - {None})
        wins = sum(
            1
            for c in ok
            if sp[_workload_key(c)][b]["vs_fastest"] < 1.0 and len(sp[_workload_key(c)]) > 1
        )
        out.append(
            {
                "backend": b,
                "ok": len(ok),
                "skipped": sum(1 for c in cells if c["status"] == "skipped"),
                "errors": sum(1 for c in cells if c["status"] == "error"),
                "capped": sum(1 for c in ok if c.get("capped")),
                "fastest_in": wins,
                "speedup_vs_torch_loop": geometric_mean(
                    [sp[_workload_key(c)][b]["vs_baseline"] for c in ok]
                ),
                "ratio_to_floor": geometric_mean([c["floor"]["ratio"] for c in ok]),
                "min_s": min((c["timing"]["median"] for c in ok), default=math.nan),
                "max_s": max((c["timing"]["median"] for c in ok), default=math.nan),
                "kernels_per_call": launches,
                "host_syncs_per_call": syncs,
            }
        )
    return out


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def summary_table(doc: dict[str, Any], fmt: str = "github") -> str:
    from tabulate import tabulate

    rows = []
    for s in backend_summary(doc):
        rows.append(
            [
                s["backend"],
                s["ok"],
                s["skipped"],
                s["errors"],
                s["capped"],
                s["fastest_in"],
                fmt_ratio(s["speedup_vs_torch_loop"]),
                fmt_ratio(s["ratio_to_floor"]),
                fmt_time(s["min_s"]),
                fmt_time(s["max_s"]),
                _span(s["kernels_per_call"]),
                _span(s["host_syncs_per_call"]),
            ]
        )
    headers = [
        "backend",
        "cells",
        "n/c",
        "errors",
        "capped",
        "fastest in",
        "speedup vs torch-loop (geomean)",
        "x floor (geomean)",
        "fastest",
        "slowest",
        "kernels/call",
        "host syncs/call",
    ]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def conformance_matrix(conf: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)``: one row per check, one column per backend, cells pass/FAIL/n/c/ERROR.

    Unavailable backends get a column of ``unavailable``.
    """
    backends = list(conf.get("backends", {}))
    checks: list[str] = []
    for entry in conf["backends"].values():
        for name in entry.get("checks") or {}:
            if name not in checks:
                checks.append(name)
    rows = []
    for check in checks:
        row = [check]
        for b in backends:
            entry = conf["backends"][b]
            if not entry.get("available", True):
                row.append("unavailable")
                continue
            res = (entry.get("checks") or {}).get(check)
            row.append(
                CONFORMANCE_MARKS.get(res.get("outcome"), str(res.get("outcome"))) if res else ""
            )
        rows.append(row)
    return ["check", *backends], rows


def conformance_summary(conf: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per backend: counts of each outcome (and ``available``)."""
    out = {}
    for b, entry in conf.get("backends", {}).items():
        counts = {"pass": 0, "fail": 0, "not-claimed": 0, "error": 0}
        for res in (entry.get("checks") or {}).values():
            counts[res.get("outcome", "error")] = counts.get(res.get("outcome", "error"), 0) + 1
        counts["available"] = bool(entry.get("available", True))
        out[b] = counts
    return out


def conformance_table(conf: dict[str, Any], fmt: str = "github") -> str:
    from tabulate import tabulate

    headers, rows = conformance_matrix(conf)
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def terminal_summary(doc: dict[str, Any], conf: dict[str, Any] | None = None) -> str:
    """One screen: device, conformance per backend, per-backend benchmark summary."""
    from tabulate import tabulate

    from .environment import describe

    lines = []
    dev = doc.get("device", {})
    lines.append(f"device: {describe(doc.get('environment', {}))}")
    if dev.get("copy_bandwidth_Bps"):
        lines.append(
            f"copy bandwidth {dev['copy_bandwidth_Bps'] / 1e9:.1f} GB/s, "
            f"one-launch floor {fmt_time(dev.get('launch_floor_s'))}"
        )
    if conf is not None:
        rows = []
        for b, cnt in conformance_summary(conf).items():
            reason = (conf["backends"][b].get("reason") or "")[:50]
            rows.append(
                [
                    b,
                    "yes" if cnt["available"] else "no",
                    cnt["pass"],
                    cnt["fail"],
                    cnt["error"],
                    cnt["not-claimed"],
                    reason,
                ]
            )
        lines.append("")
        lines.append(f"conformance ({conf.get('level', '?')}):")
        lines.append(
            tabulate(
                rows,
                headers=["backend", "available", "pass", "fail", "error", "n/c", "note"],
                tablefmt="simple",
            )
        )
    lines.append("")
    n = len(doc.get("cells", []))
    state = (
        "interrupted"
        if doc.get("interrupted")
        else ("complete" if doc.get("complete") else "partial")
    )
    lines.append(
        f"benchmark ({doc.get('config', {}).get('preset') or 'custom'} grid, {n} cells, {state}):"
    )
    rows = []
    for s in backend_summary(doc):
        rows.append(
            [
                s["backend"],
                f"{s['ok']}/{s['ok'] + s['skipped'] + s['errors']}",
                s["fastest_in"],
                fmt_ratio(s["speedup_vs_torch_loop"]),
                fmt_ratio(s["ratio_to_floor"]),
                f"{fmt_time(s['min_s'])} .. {fmt_time(s['max_s'])}",
                _span(s["kernels_per_call"]),
            ]
        )
    lines.append(
        tabulate(
            rows,
            headers=[
                "backend",
                "cells ok",
                "fastest in",
                "vs torch-loop",
                "x floor",
                "median range",
                "kernels/call",
            ],
            tablefmt="simple",
            disable_numparse=True,
        )
    )
    unavailable = {
        b: e["reason"] for b, e in doc.get("backends", {}).items() if not e.get("available")
    }
    if unavailable:
        lines.append(
            "not available here: " + "; ".join(f"{b} ({r})" for b, r in unavailable.items())
        )
    return "\n".join(lines)
