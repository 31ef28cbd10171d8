"""The serving benchmark on its tiny preset (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from specsample.reports.serving_bench import (
    SERVING_PRESETS,
    baseline_step,
    floor_bytes,
    run,
    serving_workload,
)


def test_workload_is_a_realistic_flattened_mix():
    args = serving_workload(64, 128, 8, 0.25, 0, "cpu")
    cu, T = args["cu_num_draft_tokens"], args["draft_token_ids"].shape[0]
    assert int(cu[-1]) == T and args["target_logits"].shape == (T + 64, 128)
    assert args["target_logits"].dtype == torch.bfloat16
    greedy = (args["temperature"] == 0).float().mean().item()
    assert greedy == 0.25
    random = args["temperature"][args["temperature"] > 0]
    assert random.min() >= 0.6 and random.max() <= 1.0
    assert args["top_p"].min() >= 0.9 and args["top_p"].max() <= 0.95 + 1e-6  # float32 rounding
    assert floor_bytes(args) == (2 * T + 64) * 128 * 2
    tokens = baseline_step(args)
    assert tokens.shape == (64, 9) and (tokens[:, 0] >= 0).all()


def test_workload_drafts_are_accepted_like_a_good_drafters():
    """Draft ids drawn from draft logits near the target's: per-draft acceptance about 0.7 (uniform
    ids would give about 0), measured through the vectorized backend."""
    import specsample

    args = serving_workload(128, 1024, 8, 0.25, 0, "cpu")
    ids, cu = args.pop("draft_token_ids"), args.pop("cu_num_draft_tokens")
    out = specsample.get_backend("torch-vectorized").verify_serving_flat(ids, cu, **args)
    assert (out.status == 0).all()
    drafted = torch.diff(cu, prepend=torch.zeros(1, dtype=cu.dtype))
    accepted = out.num_emitted - 1
    rejections = int((accepted < drafted).sum())
    alpha = int(accepted.sum()) / (int(accepted.sum()) + rejections)
    assert 0.55 <= alpha <= 0.85, alpha


def test_tiny_preset_times_backends_and_the_baseline():
    rows = run(SERVING_PRESETS["serving-tiny"], ["torch-vectorized"], "cpu")
    assert {r["backend"] for r in rows} == {"baseline", "torch-vectorized"}
    assert len(rows) == 2 * len(SERVING_PRESETS["serving-tiny"].batch)
    assert all(r["median_s"] > 0 and r["floor_ratio"] > 0 for r in rows)


def test_cli_serving_run_and_errors(tmp_path, capsys):
    import json

    from specsample import cli

    out = tmp_path / "serving.json"
    argv = [
        "bench",
        "--serving",
        "serving-tiny",
        "--backend",
        "torch-vectorized",
        "--out",
        str(out),
    ]
    assert cli.main([*argv, "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "specsample.serving-bench/1" and doc["preset"] == "serving-tiny"
    assert {c["backend"] for c in doc["cells"]} == {"baseline", "torch-vectorized"}
    assert {c["status"] for c in doc["cells"]} == {"ok"}
    assert "serving benchmark (serving-tiny, cpu)" in capsys.readouterr().out
    assert cli.main([*argv, "--nodes", "8", "--force"]) == 2
    assert "--nodes: not used with --serving" in capsys.readouterr().err
    assert cli.main([*argv, "--tree", "--force"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_cli_skips_a_backend_that_cannot_serve(tmp_path, capsys):
    """A named backend that claims no serving (the numpy example plugin) is a skipped cell with
    its reason, not a crash; the other backends are still timed."""
    import json

    from specsample import cli, list_backends

    infos = {i.name: i for i in list_backends()}
    name = next(
        (
            n
            for n, i in infos.items()
            if not (i.available and i.capabilities and i.capabilities.serving)
        ),
        None,
    )
    if name is None:
        pytest.skip("every registered backend serves here")
    out = tmp_path / "serving.json"
    argv = ["bench", "--serving", "serving-tiny", "--backend", f"torch-vectorized,{name}",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    cells = json.loads(out.read_text())["cells"]
    skipped = [c for c in cells if c["backend"] == name]
    assert skipped and all(c["status"] == "skipped" and c["reason"] for c in skipped)
    assert all(c["status"] == "ok" for c in cells if c["backend"] != name)
    assert "skipped: " in capsys.readouterr().out
