"""Report rendering: markdown, CSV, PNG plots (non-trivial images), the HTML page (in Chromium)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys

import pytest
from specsample.reports.render import render_report
from specsample.reports.runner import BenchConfig, run_bench
from specsample.reports.timing import TimingPolicy
from test_reports_schema import CONFORMANCE_FIXTURE  # noqa: E402  (tests dir is on sys.path)

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def doc():
    policy = TimingPolicy(
        warmup_calls=1,
        warmup_s=0.0,
        target_s=0.002,
        min_samples=3,
        max_samples=5,
        budget_s=1.0,
        l2="none",
    )
    cfg = BenchConfig(
        backends=["torch-loop", "torch-vectorized"],
        batch=(1, 4),
        k=(1, 2),
        vocab=(16,),
        mode=("random", "greedy"),
        accept=("high", "low"),
        device="cpu",
        policy=policy,
        preset="test",
    )
    return run_bench(cfg, progress=False, command=["specsample", "bench"])


@pytest.fixture(scope="module")
def report(doc, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    written = render_report(doc, CONFORMANCE_FIXTURE, out)
    return out, written


def test_files_written(report):
    out, written = report
    for key in ("markdown", "html", "csv", "plots_dir", "conformance_csv"):
        assert written[key].exists(), key
    md = written["markdown"].read_text()
    assert "## Summary" in md and "## Conformance" in md and "## random mode" in md
    assert "| torch-loop" in md and "![random: latency vs batch size](plots/" in md
    for link in re.findall(r"\]\((plots/[^)]+)\)", md):
        assert (out / link).exists()


def test_pngs_are_non_trivial_images(report):
    import matplotlib.image as mpimg

    out, _ = report
    pngs = sorted((out / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    for mode in ("random", "greedy"):
        for stem in (
            "latency_vs_batch",
            "latency_vs_k",
            "speedup_vs_torch_loop",
            "vs_fastest",
            "floor_ratio",
        ):
            assert f"{stem}_{mode}.png" in names
    for p in pngs:
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, p.name
        assert img[..., :3].std() > 0.05, f"{p.name} looks blank"


def test_csv_has_every_cell(report, doc):
    _, written = report
    rows = list(csv.DictReader(io.StringIO(written["csv"].read_text())))
    assert len(rows) == len(doc["cells"])
    loop = [r for r in rows if r["backend"] == "torch-loop"]
    assert all(float(r["speedup_vs_torch_loop"]) == 1.0 for r in loop)
    assert all(float(r["median_s"]) > 0 for r in rows)


def test_conformance_matrix(report):
    _, written = report
    md = written["markdown"].read_text()
    assert "FAIL" in md and "ERROR" in md and "n/c" in md and "unavailable" in md
    page = written["html"].read_text()
    assert 'class="fail"' in page and 'class="pass"' in page and 'class="nc"' in page
    assert "boom &lt;b&gt;" not in page or "<b>" not in page  # details escaped if shown
    conf_csv = written["conformance_csv"].read_text()
    assert "broken,True,contract,fail" in conf_csv


def test_html_is_self_contained(report):
    _, written = report
    page = written["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("data:image/png;base64,") == len(list(written["plots_dir"].glob("*.png")))
    assert not re.search(r'(src|href)="(http|//|file:|plots/)', page)


def test_conformance_only_and_tables_only(tmp_path, doc):
    w = render_report(None, CONFORMANCE_FIXTURE, tmp_path / "c")
    assert "Conformance" in w["markdown"].read_text()
    w = render_report(doc, None, tmp_path / "t", plots=False)
    assert "plots_dir" not in w and "data:image" not in w["html"].read_text()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _open_in_chromium(binary: str, page, tmp_path) -> tuple[str, str]:
    profile = tmp_path / f"profile-{page.stem}"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return proc.stdout, proc.stderr


@pytest.mark.skipif(
    _chromium() is None, reason="no chromium binary found (apt-get install chromium)"
)
def test_html_opens_in_headless_chromium_without_errors(report, tmp_path):
    binary = _chromium()
    _, written = report
    n_images = len(list(written["plots_dir"].glob("*.png")))
    dom, log = _open_in_chromium(binary, written["html"], tmp_path)
    assert f'data-images="{n_images}"' in dom, log[-2000:]
    assert 'data-images-failed="0"' in dom
    # Chromium logs every console message (and uncaught exception) as a ":CONSOLE" line; the
    # page logs nothing unless something is wrong.
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console
    # The check itself works: a page with an undecodable image is caught.
    bad = tmp_path / "bad.html"
    bad.write_text(
        written["html"]
        .read_text()
        .replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    )
    dom, log = _open_in_chromium(binary, bad, tmp_path)
    assert 'data-images-failed="1"' in dom
    assert any(":CONSOLE" in line and "failed to decode" in line for line in log.splitlines())


def test_cli_report(tmp_path, doc):
    from specsample.reports.schema import write_json

    res = write_json(doc, tmp_path / "results.json")
    conf = write_json(CONFORMANCE_FIXTURE, tmp_path / "conformance.json")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "specsample",
            "report",
            str(conf),
            str(res),
            "--out",
            str(tmp_path / "rep"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rep" / "report.html").exists()
    out = subprocess.run(
        [sys.executable, "-m", "specsample", "report", str(conf), str(conf)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "two conformance" in out.stderr


def test_merge_split_runs(doc):
    from specsample.reports.schema import merge_results

    random_part = dict(doc, cells=[c for c in doc["cells"] if c["mode"] == "random"])
    greedy_part = dict(doc, cells=[c for c in doc["cells"] if c["mode"] == "greedy"])
    random_part["config"] = dict(doc["config"], grid=dict(doc["config"]["grid"], mode=["random"]))
    greedy_part["config"] = dict(doc["config"], grid=dict(doc["config"]["grid"], mode=["greedy"]))
    merged = merge_results([random_part, greedy_part])
    assert len(merged["cells"]) == len(doc["cells"])
    assert merged["config"]["grid"]["mode"] == ["random", "greedy"]
    assert len(merged["merged_from"]) == 2
    assert len(merge_results([doc, doc])["cells"]) == len(doc["cells"])  # same cells: deduplicated
