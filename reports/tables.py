"""Tables from results: flat rows (CSV), markdown tables (tabulate) and the terminal summary."""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .schema import cell_key
from .stats import geometric_mean

BASELINE = "torch-loop"
CONFORMANCE_MARKS = {"pass": "pass", "fail": "FAIL", "not-claimed": "n/c", "error": "ERROR"}
# The project's own plugin name (BackendInfo.plugin); any other plugin is a third-party backend.
OWN_PLUGIN = "specsample"
# A cell is noisy when its inter-quartile range exceeds its median: the middle half of its samples
# spans more than the value itself. Noisy cells are marked and left out of every summary.
NOISY_IQR_OVER_MEDIAN = 1.0
NOISY_MARK = "~"
NOTE_WIDTH = 48  # the terminal tables' note column wraps at this width (never cut)
ONLY_ONE_BACKEND = "only one backend"
NOISY_NOTE = (
    f"'{NOISY_MARK}' marks a noisy cell (its IQR exceeds its median: the machine was disturbed "
    "while it ran); noisy cells, and comparisons with them, are left out of the summaries "
    "(geomeans, 'fastest in', the headline figure)."
)
TERMINAL_LEGEND = (
    "n/c = not claimed (the backend does not declare that mode, dtype, device or size); "
    "x floor = median / max(one launch, must-read bytes / copy bandwidth)"
)


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
    if abs(x) >= 10**digits:  # 1550x, not 1.55e+03x
        return f"{x:.0f}x"
    return f"{x:.{digits}g}x"


def ok_cells(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in doc.get("cells", []) if c.get("status") == "ok"]


def is_noisy(cell: dict[str, Any]) -> bool:
    """True when an ok cell's IQR exceeds :data:`NOISY_IQR_OVER_MEDIAN` times its median."""
    t = cell.get("timing") or {}
    median, iqr = t.get("median"), t.get("iqr")
    if not isinstance(median, (int, float)) or not isinstance(iqr, (int, float)):
        return False
    return math.isfinite(iqr) and iqr > NOISY_IQR_OVER_MEDIAN * median


def third_party(doc: dict[str, Any]) -> list[str]:
    """The "peers" the project's backends are compared with, in order.

    When any backend of the results wraps an external library (its entry has a non-empty
    ``"peer"``, from :attr:`specsample.Backend.peer`: FlashInfer, vLLM, SGLang; docs/peers.md),
    the peers are exactly those backends. Otherwise (no peer plugin installed, or results written
    before backends recorded it) they are the backends registered by a plugin other than
    specsample's own.
    """
    entries = doc.get("backends", {})
    wrapped = [b for b, e in entries.items() if e.get("peer")]
    if wrapped:
        return wrapped
    return [b for b, e in entries.items() if e.get("plugin") not in (None, OWN_PLUGIN)]


def peer_label(doc: dict[str, Any], backend: str) -> str:
    """``backend`` as tables show it: ``"flashinfer (peer: FlashInfer)"`` for a backend that
    wraps an external library, the plain name otherwise."""
    peer = (doc.get("backends", {}).get(backend) or {}).get("peer")
    return f"{backend} (peer: {peer})" if peer else backend


def single_backend(doc: dict[str, Any]) -> bool:
    """True when fewer than two backends have ok cells: no comparison between backends."""
    return len({c["backend"] for c in ok_cells(doc)}) < 2


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
    """Per workload and backend: ``{"vs_baseline": t_loop / t, "vs_fastest": t / t_fastest_other,
    "vs_third_party": t_fastest_third_party / t, "reliable": bool}``.

    ``vs_fastest`` divides by the fastest *other* backend in the same workload: below 1 this backend
    is the fastest of all, by that margin; nan when it is the only backend. ``vs_third_party`` is
    the speedup over the fastest third-party backend (:func:`third_party`) other than this one,
    nan when there is none. ``reliable`` is False when this cell or the baseline's is noisy
    (:func:`is_noisy`): summaries leave such cells out.
    """
    peers_3p = set(third_party(doc))
    out: dict[tuple, dict[str, dict[str, float]]] = {}
    for wk, cells in by_workload(doc).items():
        times = {b: c["timing"]["median"] for b, c in cells.items()}
        noisy = {b for b, c in cells.items() if is_noisy(c)}
        base = times.get(BASELINE)
        row = {}
        for b, t in times.items():
            others = [v for k, v in times.items() if k != b]
            third = [v for k, v in times.items() if k != b and k in peers_3p]
            row[b] = {
                "vs_baseline": base / t if base and t else math.nan,
                "vs_fastest": t / min(others) if others else math.nan,
                "vs_third_party": min(third) / t if third and t else math.nan,
                "reliable": b not in noisy and BASELINE not in noisy,
                "peers_quiet": not (noisy - {b}),
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
    "speedup_vs_fastest_third_party",
    "noisy",
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
                "speedup_vs_fastest_third_party": s.get("vs_third_party"),
                "noisy": is_noisy(c) if c.get("status") == "ok" else "",
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
                noisy = NOISY_MARK if is_noisy(c) else ""
                row.append(f"{noisy}{fmt_time(t['median'])} ±{fmt_time(t['iqr'] / 2)}{mark}")
            elif c["status"] == "skipped":
                row.append("n/c")
            else:
                row.append("error")
        rows.append(row)
    headers = ["dtype", "accept", "V", "K", "B", *backends]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def metric_table(doc: dict[str, Any], mode: str, metric: str, fmt: str = "github") -> str:
    """A per-workload x backend table of ``metric``: ``speedup``, ``vs_fastest``, ``floor``,
    ``bandwidth``, ``launches``, ``wall`` (eager wall-clock latency), ``graph`` (CUDA-graph replay),
    ``kernel_only`` (the default call over the launch path alone) or ``length`` (measured mean
    acceptance length)."""
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
            if metric in ("speedup", "vs_fastest", "floor") and is_noisy(c):
                row.append(NOISY_MARK + _metric_value(metric, sp[wk][b], c))
            else:
                row.append(_metric_value(metric, sp[wk][b], c))
        rows.append(row)
    headers = ["dtype", "accept", "V", "K", "B", *backends]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def _metric_value(metric: str, s: dict[str, Any], c: dict[str, Any]) -> str:
    """One cell of :func:`metric_table`."""
    if metric == "speedup":
        return fmt_ratio(s["vs_baseline"])
    if metric == "vs_fastest":
        return fmt_ratio(s["vs_fastest"])
    if metric == "floor":
        return fmt_ratio(c["floor"]["ratio"])
    if metric == "bandwidth":
        f = c["bandwidth"]["fraction_of_copy"]
        return f"{100 * f:.3g}%" if f == f else "-"
    if metric == "launches":
        la = c.get("launches") or {}
        k_ = la.get("kernels")
        s_ = la.get("host_syncs")
        return "-" if k_ is None else f"{k_:g} / {s_:g}"
    if metric == "wall":
        w = (c["timing"].get("wall") or {}).get("median")
        return fmt_time(w)
    if metric == "kernel_only":
        ko = c.get("kernel_only") or {}
        if ko.get("status") != "ok":
            return ko.get("status", "-")
        return f"{fmt_ratio(ko.get('default_over_kernel'))} ({fmt_time(c['timing']['median'])})"
    if metric == "graph":
        g = c.get("graph") or {}
        return fmt_time(g.get("median")) if g.get("status") == "ok" else g.get("status", "-")
    if metric == "length":
        acc = c["acceptance"]
        return f"{acc['measured_length']:.3g} ({acc['expected_length']:.3g})"
    raise ValueError(f"unknown metric {metric!r}")


def backend_summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per backend: cells run/skipped/errored/noisy, geometric-mean speedup vs torch-loop and vs
    the fastest peer of each cell (:func:`speedups`' ``vs_third_party``), ratio to the floor,
    fastest and slowest median, kernel launches and host syncs per call.

    Noisy cells (:func:`is_noisy`) are left out of the geomeans and of ``fastest_in`` (a workload
    counts there only when none of its cells is noisy); ``fastest_in`` is None when only one
    backend has results (nothing to be fastest against).
    """
    sp = speedups(doc)
    alone = single_backend(doc)
    out = []
    for b in backends_in(doc):
        cells = [c for c in doc["cells"] if c["backend"] == b]
        ok = [c for c in cells if c["status"] == "ok"]
        quiet = [c for c in ok if sp[_workload_key(c)][b]["reliable"]]
        launches = sorted({(c.get("launches") or {}).get("kernels") for c in ok} - {None})
        syncs = sorted({(c.get("launches") or {}).get("host_syncs") for c in ok} - {None})
        wins = sum(
            1
            for c in ok
            if sp[_workload_key(c)][b]["vs_fastest"] < 1.0
            and not is_noisy(c)
            and sp[_workload_key(c)][b]["peers_quiet"]
        )
        out.append(
            {
                "backend": b,
                "ok": len(ok),
                "skipped": sum(1 for c in cells if c["status"] == "skipped"),
                "errors": sum(1 for c in cells if c["status"] == "error"),
                "capped": sum(1 for c in ok if c.get("capped")),
                "noisy": sum(1 for c in ok if is_noisy(c)),
                "fastest_in": None if alone else wins,
                "speedup_vs_torch_loop": geometric_mean(
                    [sp[_workload_key(c)][b]["vs_baseline"] for c in quiet]
                ),
                # Over the fastest peer of each cell (peers: over the fastest other peer).
                "speedup_vs_fastest_peer": geometric_mean(
                    [
                        sp[_workload_key(c)][b]["vs_third_party"]
                        for c in ok
                        if not is_noisy(c) and sp[_workload_key(c)][b]["peers_quiet"]
                    ]
                ),
                "ratio_to_floor": geometric_mean(
                    [c["floor"]["ratio"] for c in ok if not is_noisy(c)]
                ),
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


def _fastest_in(s: dict[str, Any]) -> Any:
    return ONLY_ONE_BACKEND if s["fastest_in"] is None else s["fastest_in"]


def summary_table(doc: dict[str, Any], fmt: str = "github") -> str:
    from tabulate import tabulate

    peers = bool(third_party(doc))
    rows = []
    for s in backend_summary(doc):
        rows.append(
            [
                peer_label(doc, s["backend"]),
                s["ok"],
                s["skipped"],
                s["errors"],
                s["capped"],
                s["noisy"],
                _fastest_in(s),
                fmt_ratio(s["speedup_vs_torch_loop"]),
                *([fmt_ratio(s["speedup_vs_fastest_peer"])] if peers else []),
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
        "noisy",
        "fastest in",
        "speedup vs torch-loop (geomean)",
        *(["speedup vs fastest peer (geomean)"] if peers else []),
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
            reason = textwrap.fill(conf["backends"][b].get("reason") or "", NOTE_WIDTH)
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
                _fastest_in(s),
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
    if any(s["noisy"] for s in backend_summary(doc)):
        lines.append(textwrap.fill(NOISY_NOTE, 100))
    lines.append(textwrap.fill(TERMINAL_LEGEND, 100))
    unavailable = {
        b: e["reason"] for b, e in doc.get("backends", {}).items() if not e.get("available")
    }
    if unavailable:
        lines.append("not available here:")
        for b, r in unavailable.items():
            lines.append(textwrap.fill(r, 96, initial_indent=f"  {b}: ", subsequent_indent="    "))
    return "\n".join(lines)


def rule_table(doc: dict[str, Any], mode: str, fmt: str = "github") -> str | None:
    """Per workload and backend, each rule's median latency and measured tokens per call (mean
    emitted tokens), and the gain of the other rules over ``token``; None without rule cells."""
    from tabulate import tabulate

    others = [c for c in doc.get("rule_cells", []) if c.get("status") == "ok" and c["mode"] == mode]
    if not others:
        return None
    token = {(_workload_key(c), c["backend"]): c for c in ok_cells(doc) if c["mode"] == mode}
    rows = []
    for c in sorted(
        others, key=lambda c: (c["dtype"], str(c["accept"]), c["vocab"], c["k"], c["batch"])
    ):
        wk = _workload_key(c)
        t = token.get((wk, c["backend"]))
        acc = c["acceptance"]
        gain = acc.get("gain_over_token")
        rel = acc.get("relative_gain_over_token")
        rows.append(
            [
                *_workload_label_cols(wk),
                c["backend"],
                c.get("rule", "?"),
                fmt_time(t["timing"]["median"]) if t else "-",
                f"{t['acceptance']['measured_length']:.3f}" if t else "-",
                fmt_time(c["timing"]["median"]),
                f"{acc['measured_length']:.3f}",
                "-" if gain is None else f"{gain:+.3f}" + ("" if rel is None else f" ({rel:+.1%})"),
            ]
        )
    headers = [
        "dtype",
        "accept",
        "V",
        "K",
        "B",
        "backend",
        "rule",
        "token latency",
        "token tokens/call",
        "rule latency",
        "rule tokens/call",
        "gain (tokens/call)",
    ]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
