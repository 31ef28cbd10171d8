"""Deliberately broken backends fail the conformance suite, with a message naming the property."""

from __future__ import annotations

import json

import pytest
from mutants import MUTANTS, register_mutants
from specsample.conformance.checks import check_names, run_check


@pytest.fixture
def mutants_registered():
    from specsample import registry

    register_mutants()
    yield
    registry.reset()


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_fails_with_a_message_naming_the_broken_property(mutants_registered, name):
    _, checks, words = MUTANTS[name]
    for i, check in enumerate(checks):
        result = run_check(name, check, "fast")
        assert result.outcome == "fail", (check, result.outcome, result.details)
        if i == 0:
            for word in words:
                assert word.lower() in result.details.lower(), (check, result.details)


def test_the_correct_control_passes_every_check(mutants_registered):
    outcomes = {c: run_check("mutant-none", c, "fast") for c in check_names("fast")}
    bad = {c: (r.outcome, r.details) for c, r in outcomes.items() if r.outcome in ("fail", "error")}
    assert not bad


def test_runner_reports_a_mutant_as_failed_in_json(mutants_registered, tmp_path):
    from specsample.conformance.runner import run

    path = tmp_path / "m.json"
    outcome = run(
        ["mutant-shared-uniform"], "fast", str(path), ["-k", "stats or contract"], quiet=True
    )
    assert not outcome.ok
    doc = json.loads(path.read_text())
    checks = doc["backends"]["mutant-shared-uniform"]["checks"]
    assert checks["stats.independent-streams"]["outcome"] == "fail"
    assert "reused" in checks["stats.independent-streams"]["details"]
    assert checks["contract.padding"]["outcome"] == "pass"
    assert doc["backends"]["mutant-shared-uniform"]["summary"]["fail"] >= 1


def test_the_fuzz_check_passes_a_correct_backend_and_fails_a_mutant_with_a_reproducer(
    mutants_registered,
):
    """fuzz.differential (full level only) runs the fuzzer's campaign inside the suite."""
    assert "fuzz.differential" in check_names("full")
    assert "fuzz.differential" not in check_names("fast")
    good = run_check("torch-loop", "fuzz.differential", "full")
    assert good.outcome == "pass" and "2000 cases" in good.details, good.details
    bad = run_check("mutant-cdf-ge", "fuzz.differential", "full")
    assert bad.outcome == "fail", (bad.outcome, bad.details)
    assert "diverges" in bad.details and "import specsample" in bad.details, bad.details
