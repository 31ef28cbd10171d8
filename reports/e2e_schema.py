"""Validation of an end-to-end results file (schema ``specsample.e2e/1``, docs/e2e.md "JSON")
before the report reads it.

Every field the report reads is checked for presence and type, and the first problem is raised
as a one-line :class:`~specsample.reports.schema.SchemaError` naming the field by its path
(``cases[3].speculative.phases_s.verify must be a number >= 0, got "x"``).
"""

from __future__ import annotations

from typing import Any

from .schema import E2E_SCHEMA, SchemaError, _Fields, _show

E2E_STATUSES = ("ok", "unavailable", "error")
E2E_PHASES = ("draft", "target", "verify", "bookkeeping")


def _validate_run(run: _Fields, k: int | None, speculative: bool) -> None:
    run.number("tokens_per_s", required=True)
    run.number("wall_s")
    run.number("prefill_s")
    run.integer("new_tokens")
    run.integer("steps", low=1 if speculative else 0, required=speculative)
    if not speculative:
        return
    phases = run.sub("phases_s", null=False, required=True)
    assert phases is not None
    for phase in E2E_PHASES:
        phases.number(phase, null=False, required=True)
    histogram = run.array("accepted_histogram", required=True)
    assert histogram is not None
    if k is not None and len(histogram) != k + 1:
        raise run.fail("accepted_histogram", f"a list of k + 1 = {k + 1} counts")
    for i, count in enumerate(histogram):
        if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
            raise SchemaError(
                f"{run.path('accepted_histogram')}[{i}] must be an integer >= 0, got {_show(count)}"
            )
    run.number("mean_accepted")
    run.integer("verify_calls")


def _validate_case(case: Any, where: str, k: int | None) -> None:
    c = _Fields(case, where)
    c.string("backend", required=True)
    if not case["backend"]:
        raise c.fail("backend", "a non-empty string")
    c.integer("batch", low=1, required=True)
    c.integer("vocab", low=1, required=True)
    c.present("status", required=True)
    if case["status"] not in E2E_STATUSES:
        raise c.fail("status", "one of " + ", ".join(f'"{s}"' for s in E2E_STATUSES))
    c.string("reason", null=True)
    if case["status"] != "ok":
        return
    baseline = c.sub("baseline", null=False, required=True)
    assert baseline is not None
    _validate_run(baseline, k, speculative=False)
    speculative = c.sub("speculative", null=False, required=True)
    assert speculative is not None
    _validate_run(speculative, k, speculative=True)
    c.number("speedup", required=True)
    c.number("verify_share", required=True)
    if case["verify_share"] is not None and case["verify_share"] > 1:
        raise c.fail("verify_share", "a fraction in [0, 1]")
    projection = c.array("projection", required=True)
    for j, row in enumerate(projection or []):
        r = _Fields(row, f"{c.path('projection')}[{j}]")
        r.present("factor", required=True)
        if row["factor"] != "inf":
            r.number("factor", strict=True, null=False)
        r.number("speedup", required=True)
        r.number("tokens_per_s", required=True)
    if case.get("matches_baseline") is not None:
        c.boolean("matches_baseline")
    launches = c.sub("verify_launches")
    if launches is not None:
        launches.number("kernels")  # the counts the report shows
        launches.number("host_syncs")
        for key, value in launches.obj.items():
            if not isinstance(value, str):
                launches.number(key)


def validate_e2e(doc: Any) -> dict[str, Any]:
    """Check ``doc`` against ``specsample.e2e/1``; return it.

    Args:
        doc: the decoded JSON document.

    Raises:
        SchemaError: the first problem, naming the field by its path.
    """
    if not isinstance(doc, dict):
        raise SchemaError(f"end-to-end results must be a JSON object, got {_show(doc)}")
    top = _Fields(doc, "")
    if doc.get("schema") != E2E_SCHEMA:
        raise SchemaError(f'schema must be "{E2E_SCHEMA}", got {_show(doc.get("schema"))}')
    top.string("created", required=True)
    top.sub("environment", null=False)
    settings = top.sub("settings", null=False, required=True)
    assert settings is not None
    settings.integer("k", required=True)
    settings.integer("tokens", low=1, required=True)
    settings.integer("prompt_len", low=1)
    settings.string("mode", required=True)
    settings.string("device", required=True)
    settings.string("timer")
    settings.number("temperature", strict=True, null=False)
    settings.integer("seed")
    settings.integer("repeat", low=1)
    models = top.sub("models", null=False)
    if models is not None:
        for vocab in models.obj:
            models.sub(vocab, null=False)
    cases = top.array("cases", required=True)
    k = settings.obj["k"]
    for i, case in enumerate(cases or []):
        _validate_case(case, f"cases[{i}]", k)
    return doc
