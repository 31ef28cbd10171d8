"""Reports and peers: backends that wrap another library (``Backend.peer``) are the peers every
project backend is compared with, and tables mark them."""

from __future__ import annotations

import math

from specsample.reports import tables as T
from specsample.reports.headline import headline, headline_table


def _cell(backend: str, median: float, batch: int = 64) -> dict:
    return {
        "backend": backend,
        "mode": "random",
        "dtype": "float32",
        "batch": batch,
        "k": 8,
        "vocab": 128256,
        "accept": "high",
        "status": "ok",
        "timing": {"median": median, "iqr": 0.0, "q1": median, "q3": median, "n": 10},
        "floor": {"ratio": median / 10e-6},
    }


def _doc() -> dict:
    backends = {
        "torch-loop": {"plugin": "specsample", "peer": ""},
        "triton": {"plugin": "specsample", "peer": ""},
        "numpy": {"plugin": "numpy", "peer": ""},  # a third-party plugin that wraps nothing
        "flashinfer": {"plugin": "flashinfer", "peer": "FlashInfer"},
        "vllm": {"plugin": "vllm", "peer": "vLLM"},
    }
    times = {
        "torch-loop": 1e-3,
        "triton": 40e-6,
        "numpy": 20e-6,
        "flashinfer": 100e-6,
        "vllm": 80e-6,
    }
    return {"backends": backends, "cells": [_cell(b, t) for b, t in times.items()]}


def test_wrapped_libraries_are_the_peers():
    doc = _doc()
    assert T.third_party(doc) == ["flashinfer", "vllm"]
    assert T.peer_label(doc, "flashinfer") == "flashinfer (peer: FlashInfer)"
    assert T.peer_label(doc, "triton") == "triton"


def test_speedup_over_the_fastest_peer_per_cell():
    doc = _doc()
    (row,) = T.speedups(doc).values()
    assert math.isclose(row["triton"]["vs_third_party"], 80e-6 / 40e-6)  # vLLM is the fastest peer
    assert math.isclose(row["numpy"]["vs_third_party"], 4.0)  # numpy is not a peer: compared too
    assert math.isclose(row["vllm"]["vs_third_party"], 100e-6 / 80e-6)  # a peer against the others
    rows = {r["backend"]: r for r in T.flat_rows(doc)}
    assert math.isclose(rows["triton"]["speedup_vs_fastest_third_party"], 2.0)


def test_without_peer_entries_third_party_plugins_stand_in():
    doc = _doc()
    for entry in doc["backends"].values():
        entry.pop("peer")
    assert T.third_party(doc) == ["numpy", "flashinfer", "vllm"]


def test_headline_marks_peers():
    table = headline_table(headline(_doc()))
    assert "flashinfer (peer)" in table and "vllm (peer)" in table
    assert "triton (peer)" not in table and "numpy (peer)" not in table


def test_summary_shows_the_speedup_over_the_fastest_peer():
    doc = _doc()
    (row,) = [r for r in T.backend_summary(doc) if r["backend"] == "triton"]
    assert math.isclose(row["speedup_vs_fastest_peer"], 2.0)
    table = T.summary_table(doc)
    assert "speedup vs fastest peer (geomean)" in table and "flashinfer (peer: FlashInfer)" in table
    no_peers = {"backends": {b: {"peer": ""} for b in ("torch-loop", "triton")}, "cells": []}
    no_peers["cells"] = [c for c in doc["cells"] if c["backend"] in no_peers["backends"]]
    assert "fastest peer" not in T.summary_table(no_peers)


def test_headline_without_torch_loop_still_shows_the_peers():
    doc = _doc()
    doc["cells"] = [c for c in doc["cells"] if c["backend"] != "torch-loop"]
    h = headline(doc)
    assert not h.empty
    assert "/ 2x" in headline_table(h)  # triton over vLLM, the fastest peer
