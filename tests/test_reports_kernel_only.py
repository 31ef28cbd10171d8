"""The benchmark times the documented default call and, for fused backends, the launch path alone."""

from __future__ import annotations

import dataclasses
import math

from specsample.backends.torch_vectorized import TorchVectorizedBackend


def _sweep(monkeypatch, fused: bool, peer: str = "", rule: tuple[str, ...] = ("token",)):
    from specsample.reports import runner
    from specsample.reports.presets import get_preset

    monkeypatch.setattr(runner, "_peer_of", lambda name: peer)
    caps = dataclasses.replace(TorchVectorizedBackend.capabilities, fused=fused)
    monkeypatch.setattr(TorchVectorizedBackend, "capabilities", caps)
    # seen: (which call, rule) of every _verify; the default call's _verify runs inside verify
    calls = {"verify": 0, "_verify": 0, "seen": set(), "in_default": False}
    original_verify, original_inner = TorchVectorizedBackend.verify, TorchVectorizedBackend._verify

    def verify(self, *args, **kwargs):
        calls["verify"] += 1
        assert "check_finite" not in kwargs and "validate" not in kwargs  # the default call
        calls["in_default"] = True
        try:
            return original_verify(self, *args, **kwargs)
        finally:
            calls["in_default"] = False

    def inner(self, inputs):
        calls["_verify"] += 1
        calls["seen"].add(("default" if calls["in_default"] else "kernel", inputs.rule))
        return original_inner(self, inputs)

    monkeypatch.setattr(TorchVectorizedBackend, "verify", verify)
    monkeypatch.setattr(TorchVectorizedBackend, "_verify", inner)
    cfg = runner.BenchConfig(
        backends=["torch-vectorized"],
        batch=(2,),
        k=(3,),
        vocab=(64,),
        mode=("random", "greedy"),
        accept=("high",),
        rule=rule,
        device="cpu",
        policy=get_preset("tiny").policy,
    )
    return runner.run_bench(cfg, progress=False), calls


def test_fused_backends_get_a_kernel_only_column(monkeypatch):
    doc, calls = _sweep(monkeypatch, fused=True)
    assert calls["verify"] > 0 and calls["_verify"] > calls["verify"]
    for cell in doc["cells"]:
        assert cell["status"] == "ok", cell.get("reason")
        ko = cell["kernel_only"]
        assert ko["status"] == "ok" and ko["median"] > 0 and "alternating" in ko["method"]
        assert ko["interleaved_with"] == 1 and cell["timing"]["interleaved_with"] == 1
        assert math.isclose(ko["default_over_kernel"], cell["timing"]["median"] / ko["median"])


def test_the_kernel_only_call_of_a_block_cell_runs_the_block_rule(monkeypatch):
    """A rule cell's two timings must time the same rule (the kernel-only call once timed the
    token kernel beside the block rule's default call)."""
    doc, calls = _sweep(monkeypatch, fused=True, rule=("token", "block"))
    block = [c for c in doc["rule_cells"] if c["rule"] == "block"]
    assert block and all(c["kernel_only"]["status"] == "ok" for c in block)
    assert {("kernel", "block"), ("default", "block")} <= calls["seen"]


def test_other_backends_time_the_default_call_only(monkeypatch):
    doc, calls = _sweep(monkeypatch, fused=False)
    assert calls["_verify"] == calls["verify"]
    assert all("kernel_only" not in cell for cell in doc["cells"])


def test_the_report_shows_default_against_kernel_only(monkeypatch, tmp_path):
    from specsample.reports.render import render_report

    doc, _ = _sweep(monkeypatch, fused=True)
    render_report(doc, None, tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "### Default call / kernel-only call" in md
    section = md.split("### Default call / kernel-only call", 1)[1].split("###", 1)[0]
    ratio = doc["cells"][0]["kernel_only"]["default_over_kernel"]
    assert f"{ratio:.3g}" in section or f"{ratio:.3f}" in section


def test_peers_are_timed_without_specsamples_input_checks(monkeypatch):
    doc, calls = _sweep(monkeypatch, fused=False, peer="SomeLibrary")
    assert calls["verify"] == 0 and calls["_verify"] > 0  # never the eager-checked default call
    for cell in doc["cells"]:
        assert cell["status"] == "ok" and cell["timed_call"] == "pre-validated"
        assert "kernel_only" not in cell


def test_project_backends_time_the_default_call(monkeypatch):
    doc, _ = _sweep(monkeypatch, fused=False)
    assert {cell["timed_call"] for cell in doc["cells"]} == {"default"}
