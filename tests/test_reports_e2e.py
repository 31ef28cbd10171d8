"""``specsample report`` on end-to-end results (schema ``specsample.e2e/1``): tables whose numbers
are the file's, plots, the HTML page, alongside a benchmark file, and one-line errors for a
malformed file."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from specsample.cli import main
from specsample.decode.e2e import SCHEMA, check_document
from specsample.reports.e2e_schema import validate_e2e
from specsample.reports.render import render_report
from specsample.reports.schema import E2E_SCHEMA, SchemaError, detect_kind, write_json
from test_cli_errors import VALID as BENCH  # noqa: E402  (tests dir is on sys.path)


def _run(steps: int, tok_s: float, phases: tuple[float, float, float, float], hist: list[int]):
    draft, target, verify, other = phases
    return {
        "backend": None,
        "new_tokens": 24,
        "steps": steps,
        "wall_s": sum(phases),
        "prefill_s": 0.001,
        "tokens_per_s": tok_s,
        "phases_s": {"draft": draft, "target": target, "verify": verify, "bookkeeping": other},
        "accepted_histogram": hist,
        "mean_accepted": 1.2,
        "tokens_per_step": 2.2,
        "verify_calls": steps,
    }


def _case(backend, batch, tok_s, phases, share, projection, launches):
    return {
        "backend": backend,
        "batch": batch,
        "vocab": 64,
        "status": "ok",
        "reason": "",
        "baseline": {**_run(24, 100.0, (0.0, 0.2, 0.0, 0.01), []), "accepted_histogram": None},
        "speculative": {**_run(10, tok_s, phases, [2, 4, 4]), "backend": backend},
        "speedup": tok_s / 100.0,
        "verify_share": share,
        "projection": [
            {"factor": f, "speedup": s, "tokens_per_s": tok_s * s} for f, s in projection
        ],
        "matches_baseline": None,
        "verify_launches": launches,
    }


# Phases per step: 3, 4, 2 and 1 ms (share 0.2); the projection is 1 / (0.8 + 0.2 / f).
E2E = {
    "schema": SCHEMA,
    "created": "2026-01-02T03:04:05+00:00",
    "environment": {"machine": "x86_64", "cpu_count": 2, "torch_threads": 1},
    "settings": {
        "k": 2,
        "tokens": 24,
        "prompt_len": 8,
        "mode": "random",
        "temperature": 1.0,
        "seed": 0,
        "device": "cuda",
        "timer": "cuda_event",
    },
    "models": {
        "64": {
            "kind": "demo",
            "size": "tiny",
            "seed": 0,
            "target": {"vocab_size": 64, "d_model": 32, "n_layers": 2},
            "draft_layers": 1,
            "draft_vocab": 16,
            "dtype": "float32",
            "target_params": 25_000_000,
            "draft_params": 1_500_000,
        }
    },
    "cases": [
        _case(
            "torch-loop",
            1,
            150.0,
            (0.03, 0.04, 0.02, 0.01),
            0.2,
            [(0.5, 1 / 1.2), (2.0, 1 / 0.9), (10.0, 1 / 0.82), ("inf", 1.25)],
            {"kernels": 46.0, "memcpy": 42.0, "host_syncs": 34.0, "method": "profiler"},
        ),
        _case(
            "cuda-cpp",
            1,
            180.0,
            (0.03, 0.04, 0.001, 0.01),
            0.001 / 0.081,
            [(2.0, 1.00621), ("inf", 1.0125)],
            {"kernels": 1.0, "memcpy": 0.0, "host_syncs": 0.0, "method": "profiler"},
        ),
        {
            "backend": "triton",
            "batch": 1,
            "vocab": 64,
            "status": "unavailable",
            "reason": "no GPU here",
        },
        _case(
            "torch-vectorized",
            4,
            400.0,
            (0.05, 0.06, 0.0125, 0.0025),
            0.1,
            [(2.0, 1 / 0.95), ("inf", 1 / 0.9)],
            None,
        ),
    ],
}


def _cells(md: str, backend: str) -> list[list[str]]:
    """The cells of every markdown table row of ``backend``."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in md.splitlines()
        if line.startswith(f"| {backend} ")
    ]


def test_schema_constant_and_fixture_agree_with_the_writer():
    assert E2E_SCHEMA == SCHEMA
    check_document(copy.deepcopy(E2E))  # the loop's own shape check accepts the fixture
    assert validate_e2e(copy.deepcopy(E2E))["cases"][0]["backend"] == "torch-loop"
    assert detect_kind(E2E) == "e2e"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("matplotlib")
    from specsample.reports.plots import layout_problems

    out = tmp_path_factory.mktemp("e2e-report")
    problems: list[str] = []

    def check(fig, name):
        problems.extend(f"{name}: {p}" for p in layout_problems(fig))

    written = render_report(None, None, out, on_figure=check, e2e=[copy.deepcopy(E2E)])
    return out, written, problems


def test_tables_carry_the_files_numbers(report):
    _, written, _ = report
    md = written["markdown"].read_text()
    assert "## End to end" in md
    assert "### V=64 B=1 (K=2, random mode)" in md and "### V=64 B=4 (K=2, random mode)" in md
    assert _cells(md, "torch-loop") == [
        # tok/s spec, plain, speedup, accepted, draft/target/verify/other ms per step, share,
        # projected tok/s at verify 2x and free, kernels and host syncs per verify call
        [
            "torch-loop",
            "150.00",
            "100.00",
            "1.50x",
            "1.20",
            "3.00",
            "4.00",
            "2.00",
            "1.00",
            "20.0%",
            "166.67",
            "187.50",
            "46",
            "34",
        ]
    ]
    cuda = _cells(md, "cuda-cpp")[0]
    assert cuda[7] == "0.10" and cuda[9] == "1.2%" and cuda[12:] == ["1", "0"]
    vec = _cells(md, "torch-vectorized")[0]
    assert vec[1:4] == ["400.00", "100.00", "4.00x"] and vec[7] == "1.25"
    assert vec[12:] == ["-", "-"]  # no launch counts in the file: shown as missing, not as 0
    assert _cells(md, "triton")[0][1] == "unavailable: no GPU here"
    assert "demo tiny (seed 0), float32: target 2 blocks, d_model 32, 25.0 M" in md
    assert "K=2, 24 tokens per request, prompts of 8 tokens, random mode" in md


def test_plots_and_html(report):
    out, written, problems = report
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["e2e_accepted.png", "e2e_phases.png"]
    for name in pngs:
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert problems == []
    md = written["markdown"].read_text()
    assert "![end to end: time per phase per backend](plots/e2e_phases.png)" in md
    page = written["html"].read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "<h2>End to end</h2>" in page and "<td>torch-loop</td><td>150.00</td>" in page


def test_e2e_with_a_benchmark_file_is_one_report(tmp_path, capsys):
    e2e = write_json(E2E, tmp_path / "e2e.json")
    bench = write_json(BENCH, tmp_path / "bench.json")
    out = tmp_path / "rep"
    assert main(["report", str(e2e), str(bench), "--no-plots", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.index("## Summary") < md.index("## End to end")
    assert md.count("# specsample report") == 1
    assert ["torch-loop", "150.00", "100.00"] in [row[:3] for row in _cells(md, "torch-loop")]
    two = tmp_path / "two"
    assert main(["report", str(e2e), str(e2e), "--no-plots", "--out", str(two)]) == 0
    md = (two / "report.md").read_text()
    assert "## End to end (1)" in md and "## End to end (2)" in md


def _with(path: str, value) -> dict:
    doc = copy.deepcopy(E2E)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is None:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return doc


@pytest.mark.parametrize(
    "path, value, fragment",
    [
        ("cases.0.speculative.phases_s.verify", "x", "cases[0].speculative.phases_s.verify must"),
        ("cases.0.speculative.steps", 0, "cases[0].speculative.steps must be an integer >= 1"),
        ("cases.3.speculative.accepted_histogram", [1, 2], "a list of k + 1 = 3 counts"),
        ("cases.1.verify_share", 1.5, "cases[1].verify_share must be a fraction in [0, 1]"),
        ("cases.2.status", "done", 'cases[2].status must be one of "ok"'),
        ("cases.0.baseline", None, "cases[0].baseline is missing"),
        ("settings.k", None, "settings.k is missing"),
        ("cases.0.verify_launches.kernels", "many", "verify_launches.kernels must be a number"),
    ],
)
def test_malformed_file_is_a_one_line_error(tmp_path, capsys, path, value, fragment):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(path, value)))
    code = main(["report", str(bad), "--no-plots", "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(bad) in lines[0] and fragment in lines[0], lines[0]


def test_validator_names_the_field():
    with pytest.raises(SchemaError, match=r"cases\[0\]\.speedup must be a number >= 0"):
        validate_e2e(_with("cases.0.speedup", -1.0))
    with pytest.raises(SchemaError, match="schema must be"):
        detect_kind({"schema": "specsample.e2e/2"})


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="no chromium binary (apt-get install chromium)"
)
def test_page_opens_in_headless_chromium(report, tmp_path):
    from test_report_html import _chromium_run  # noqa: E402  (tests dir is on sys.path)

    _, written, _ = report
    dom = _chromium_run(shutil.which("chromium"), written["html"], tmp_path, "--dump-dom").stdout
    assert 'data-images="2"' in dom and 'data-images-failed="0"' in dom, dom[-2000:]
    assert 'data-overflow-x="false"' in dom, "the page scrolls sideways"
