"""The differential fuzzer: its cases are valid and adversarial, it finds planted bugs and shrinks
them, and the CPU backends pass a bounded campaign (SPECSAMPLE_FUZZ_CASES cases each, default
2000; the full 100,000-case campaign is ``specsample fuzz --cases 100000``)."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import pytest
import specsample
import torch
from mutants import CORRECT, MUTANTS, register_mutants
from specsample import cli
from specsample.contract import Capabilities
from specsample.fuzz import run_fuzz
from specsample.fuzz_cases import U_MAX, make_case

# torch-compile spends minutes compiling its graphs on a CPU (the cases themselves are fast).
CPU_BACKENDS = [
    "torch-loop",
    "torch-vectorized",
    pytest.param("torch-compile", marks=pytest.mark.slow),
    "numpy",
]
CASES = int(os.environ.get("SPECSAMPLE_FUZZ_CASES", "2000"))


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_cpu_backend_has_no_divergence(name):
    info = {i.name: i for i in specsample.list_backends()}.get(name)
    if info is None or not info.available:
        pytest.skip(f"{name} is not available here: {info.reason if info else 'not installed'}")
    backend = specsample.get_backend(name)
    if name == "torch-compile":
        backend = _without_serving_cases(backend)
    result = run_fuzz(backend, cases=CASES, seed=0, device="cpu")
    report = "\n\n".join(f"{d.message}\n{d.reproducer}" for d in result.divergences)
    assert not result.divergences, report
    assert result.cases == CASES and not result.stopped


def _without_serving_cases(backend):
    """The same backend, its campaign drawn without serving cases. torch-compile compiles a
    serving graph per kind of call (logits or probabilities, draft kind, dtype, filters, coin
    source); a campaign's serving cases reach dozens of kinds, over 20 minutes of compiling on a
    2-core CPU. Its serving path is checked by the serving.* conformance checks at the fast level,
    and `specsample fuzz --backend torch-compile` includes serving cases."""
    import copy
    import dataclasses

    narrowed = copy.copy(backend)
    narrowed.capabilities = dataclasses.replace(backend.capabilities, serving=False)
    return narrowed


def test_cases_are_deterministic_and_depend_on_the_seed():
    caps = Capabilities()
    a, b, c = make_case(3, 17, caps), make_case(3, 17, caps), make_case(4, 17, caps)
    assert torch.equal(a.target_probs, b.target_probs) and a.tags == b.tags
    assert a.target_probs.shape != c.target_probs.shape or not torch.equal(
        a.target_probs, c.target_probs
    )


def test_cases_are_valid_and_cover_the_adversarial_features():
    caps = Capabilities()
    tags: Counter[str] = Counter()
    shapes = set()
    for i in range(400):
        case = make_case(0, i, caps)
        B, K, V = case.shape
        shapes.add((K == 0, V == 1, V & (V - 1) != 0))
        tags.update(case.tags)
        for name in ("target_probs", "draft_probs"):
            t = getattr(case, name)
            if t is None or t.numel() == 0:
                continue
            assert t.dtype == case.target_probs.dtype
            assert bool((t >= 0).all()) and bool(torch.isfinite(t).all()), (i, name)
            sums = t.to(torch.float64).sum(-1)
            assert float(sums.max()) <= torch.finfo(torch.float32).max, (i, name, "sum overflows")
        assert bool((case.target_probs.to(torch.float64).sum(-1) > 0).all()), (i, "zero row")
        if case.uniforms is not None:
            u = case.uniforms
            assert u.dtype == torch.float32 and bool(((u >= 0) & (u <= U_MAX)).all()), i
        out = specsample.reference_verify(
            case.draft_token_ids,
            case.draft_probs,
            case.target_probs,
            mode=case.mode,
            uniforms=case.uniforms,
            validate="full",
        )
        assert int(out.status.abs().sum()) == 0, i
    for feature in (
        "cdf-boundary",
        "non-contiguous",
        "p=q",
        "disjoint",
        "zero-at-draft",
        "float32",
        "float16",
        "bfloat16",
        "random",
        "greedy",
        "draft_probs",
        "draft_probs=None",
    ):
        assert tags[feature] > 0, feature
    assert (True, False, False) in shapes or any(s[0] for s in shapes)  # K = 0
    assert any(s[1] for s in shapes) and any(s[2] for s in shapes)  # V = 1, V not a power of 2


def test_cases_respect_the_claims():
    caps = Capabilities(modes=("greedy",), dtypes=("bfloat16",), max_vocab=8, max_k=1)
    for i in range(100):
        case = make_case(1, i, caps)
        B, K, V = case.shape
        assert case.mode == "greedy" and case.uniforms is None
        assert case.target_probs.dtype == torch.bfloat16 and V <= 8 and K <= 1


def test_the_correct_sampler_has_no_divergence():
    result = run_fuzz(CORRECT(), cases=300, seed=2)
    assert not result.divergences and result.cases == 300


@pytest.mark.parametrize(
    "mutant", ["mutant-cdf-ge", "mutant-accept-float32", "mutant-greedy-ties-largest"]
)
def test_a_planted_bug_is_found_and_shrunk_to_a_runnable_reproducer(mutant, fresh_registry):
    register_mutants()
    backend = MUTANTS[mutant][0]()
    result = run_fuzz(backend, cases=3000, seed=0, max_divergences=1)
    assert len(result.divergences) == 1, result.summary()
    d = result.divergences[0]
    B, K, V = d.shrunk.shape
    assert B == 1 and K <= 2 and V <= 4, (B, K, V)
    # The reproducer is self-contained: run it and see the backend and the reference disagree.
    printed: list[tuple] = []
    exec(d.reproducer, {"print": lambda *a: printed.append(a)})
    (_, got_tokens, got_n), (_, want_tokens, want_n) = printed
    assert (got_tokens, got_n) != (want_tokens, want_n)


def test_time_budget_stops_early():
    result = run_fuzz("torch-loop", cases=10**9, seed=0, time_budget=0.5)
    assert result.stopped.startswith("time budget") and 0 < result.cases < 10**9
    assert math.isfinite(result.cases_per_s)


def test_cli_exit_codes_and_json(tmp_path, fresh_registry, capsys):
    out = tmp_path / "fuzz.json"
    rc = cli.main(["fuzz", "--backend", "torch-loop", "--cases", "40", "-q", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc[0]["backend"] == "torch-loop" and doc[0]["cases"] == 40
    assert doc[0]["divergences"] == [] and doc[0]["stopped"] is None
    assert "torch-loop: 40 cases" in capsys.readouterr().out

    register_mutants()
    rc = cli.main(["fuzz", "--backend", "mutant-cdf-ge", "--cases", "500", "-q"])
    printed = capsys.readouterr().out
    assert rc == 1
    assert "divergence at case" in printed and "import specsample" in printed

    assert cli.main(["fuzz", "--backend", "torch-loop", "--json", str(out), "-q"]) == 2
    assert "--json" in capsys.readouterr().err


def test_parallel_campaign_runs_the_same_cases_as_one_process():
    from specsample.fuzz_parallel import chunk_size, run_fuzz_parallel

    serial = run_fuzz("torch-loop", cases=230, seed=5, device="cpu")
    chunks: list[int] = []
    (parallel,) = run_fuzz_parallel(
        ["torch-loop"], jobs=2, cases=230, seed=5, device="cpu", progress=chunks.append
    )
    assert not serial.divergences and not parallel.divergences and not parallel.stopped
    assert (parallel.cases, parallel.requests, parallel.rounding_ties) == (
        serial.cases,
        serial.requests,
        serial.rounding_ties,
    )
    assert sum(chunks) == 230 and len(chunks) == -(-230 // chunk_size(230, 2)) >= 2


def test_parallel_campaign_keeps_one_deadline():
    from specsample.fuzz_parallel import run_fuzz_parallel

    (result,) = run_fuzz_parallel(["torch-loop"], jobs=2, cases=10**7, seed=0, time_budget=3.0)
    # Workers that start after the deadline run no case; the campaign still ends, soon after it.
    assert result.stopped == "time budget of 3 s" and result.cases < 10**7
    assert result.elapsed_s < 60
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        run_fuzz_parallel(["torch-loop"], jobs=0)


def test_cli_jobs(capsys):
    assert cli.main(["fuzz", "--backend", "torch-loop", "--cases", "120", "-j", "2", "-q"]) == 0
    assert "torch-loop: 120 cases" in capsys.readouterr().out
    assert cli.main(["fuzz", "--backend", "torch-loop", "-j", "0", "-q"]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_one_campaign_over_several_backends_equals_separate_campaigns(fresh_registry):
    from specsample.fuzz import run_fuzz_many

    register_mutants()
    names = ["torch-loop", "torch-vectorized", "mutant-cdf-ge"]
    together = run_fuzz_many(names, cases=300, seed=2, device="cpu", max_divergences=1)
    for name, result in zip(names, together, strict=True):
        alone = run_fuzz(name, cases=300, seed=2, device="cpu", max_divergences=1)
        assert result.backend == name
        assert (result.cases, result.requests, result.rounding_ties, result.stopped) == (
            alone.cases,
            alone.requests,
            alone.rounding_ties,
            alone.stopped,
        )
        assert [d.index for d in result.divergences] == [d.index for d in alone.divergences]
    # The mutant leaves the campaign at its first divergence; the others run every case.
    assert together[2].stopped == "1 divergence(s)" and together[2].cases < 300
    assert together[0].cases == together[1].cases == 300
