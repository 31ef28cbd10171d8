"""The report explains itself and reads cleanly: the headline first, no clipped or overlapping
text in any plot, no matplotlib warnings, noisy cells marked and left out of summaries, no
single-backend comparisons, no degenerate plots, and a page that Chromium lays out without
sideways overflow (screenshots taken)."""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import warnings

import pytest
from specsample.reports import tables as T
from specsample.reports.render import render_report
from specsample.reports.runner import BenchConfig, run_bench
from specsample.reports.timing import TimingPolicy

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def doc():
    import specsample

    names = ["torch-loop", "torch-vectorized"]
    if "numpy" in {b.name for b in specsample.list_backends()}:
        names.append("numpy")  # a third-party backend: the headline's second panel
    policy = TimingPolicy(
        warmup_calls=3, warmup_s=0.0, target_s=0.002, min_samples=3, max_samples=5, budget_s=1.0
    )
    cfg = BenchConfig(
        backends=names,
        batch=(1, 4),
        k=(2,),  # one K: the latency-vs-K plot must not be drawn
        vocab=(16,),
        mode=("random", "greedy"),
        accept=("high", "low"),
        device="cpu",
        policy=policy,
        preset="test",
    )
    return run_bench(cfg, progress=False, command=["specsample", "run"])


def _quiet(doc):
    """``doc`` with every cell's spread well below its median (no noisy cells)."""
    out = copy.deepcopy(doc)
    for c in T.ok_cells(out):
        c["timing"]["iqr"] = 0.1 * c["timing"]["median"]
    return out


def _render(doc, out):
    from specsample.reports.plots import layout_problems

    problems: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = render_report(
            doc,
            None,
            out,
            on_figure=lambda fig, name: problems.extend(
                f"{name}: {p}" for p in layout_problems(fig)
            ),
        )
    return written, problems


@pytest.fixture(scope="module")
def report(doc, tmp_path_factory):
    return _render(_quiet(doc), tmp_path_factory.mktemp("report"))


def test_plots_have_no_warnings_clipped_or_overlapping_text(report):
    written, problems = report
    assert not problems, problems
    names = {p.name for p in written["plots_dir"].glob("*.png")}
    assert "headline.png" in names
    assert not any(n.startswith("latency_vs_k") for n in names), "one K: no latency-vs-K plot"
    assert "latency_vs_batch_random.png" in names


def test_headline_opens_both_pages(report):
    written, _ = report
    md = written["markdown"].read_text()
    assert md.index("## Headline") < md.index("| machine |") < md.index("## Summary")
    assert "![headline](plots/headline.png)" in md
    page = written["html"].read_text()
    assert page.index('id="headline"') < page.index('class="meta"')


def test_every_section_says_how_to_read_it(report, doc):
    md = report[0]["markdown"].read_text()
    assert "Why the Python loop can win on a CPU" in md  # a CPU report
    assert "Median latency (wall-clock, cold cache)" in md
    assert "Eager wall-clock latency (host + device, synchronized, warm cache)" in md
    for section in md.split("\n### ")[1:]:
        lines = [line for line in section.splitlines()[1:] if line.strip()]
        assert lines and not lines[0].startswith("|"), f"no explanation before: {lines[:1]}"


def test_noisy_cells_are_marked_and_left_out_of_summaries(doc):
    noisy = _quiet(doc)
    cell = next(c for c in T.ok_cells(noisy) if c["backend"] == "torch-vectorized")
    cell["timing"]["iqr"] = 5 * cell["timing"]["median"]
    assert T.is_noisy(cell)
    assert T.NOISY_MARK in T.latency_table(noisy, cell["mode"])
    summary = {s["backend"]: s for s in T.backend_summary(noisy)}
    assert summary["torch-vectorized"]["noisy"] == 1
    sp = T.speedups(noisy)
    kept = [
        sp[T._workload_key(c)]["torch-vectorized"]["vs_baseline"]
        for c in T.ok_cells(noisy)
        if c["backend"] == "torch-vectorized" and c is not cell
    ]
    assert math.isclose(
        summary["torch-vectorized"]["speedup_vs_torch_loop"], T.geometric_mean(kept)
    )
    assert "noisy" in T.terminal_summary(noisy)


def test_one_backend_is_not_compared_with_nothing(doc, tmp_path):
    one = _quiet(doc)
    one["cells"] = [c for c in one["cells"] if c["backend"] == "torch-vectorized"]
    summary = T.summary_table(one)
    assert T.ONLY_ONE_BACKEND in summary
    terminal = T.terminal_summary(one)
    assert T.ONLY_ONE_BACKEND in terminal
    written, problems = _render(one, tmp_path)
    assert not problems, problems
    md = written["markdown"].read_text()
    assert "Time / fastest other backend" not in md and "only one backend" in md
    assert not list(written["plots_dir"].glob("vs_fastest_*"))


def test_terminal_wraps_notes_and_explains_marks(doc):
    long = _quiet(doc)
    reason = "no CUDA device (set TRITON_INTERPRET=1 before triton is imported to run it on a CPU)"
    long["backends"]["triton"] = {"available": False, "reason": reason, "plugin": "specsample"}
    conf = {
        "level": "fast",
        "backends": {"triton": {"available": False, "reason": reason, "checks": {}}},
    }
    text = T.terminal_summary(long, conf)
    assert "n/c = not claimed" in text
    words = " ".join(text.split())
    assert reason in words  # wrapped over lines, never cut
    assert max(len(line) for line in text.splitlines()) < 140


def test_layout_checker_catches_problems():
    _, plt = __import__("specsample.reports.plots", fromlist=["_mpl"])._mpl()
    from specsample.reports.plots import layout_problems

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_xticks(range(5))
    ax.set_xticklabels(["a long label"] * 5)
    fig.text(0.9, 0.5, "runs off the right edge")
    problems = layout_problems(fig)
    plt.close(fig)
    assert any("overlap" in p for p in problems)
    assert any("outside the figure" in p for p in problems)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _chromium_run(binary, page, tmp_path, *extra):
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2400",
        "--virtual-time-budget=5000",
        *extra,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_page_in_headless_chromium(report, tmp_path):
    binary = _chromium()
    page = report[0]["html"]
    dom = _chromium_run(binary, page, tmp_path, "--dump-dom").stdout
    assert 'data-images-failed="0"' in dom
    assert 'data-overflow-x="false"' in dom, "the page scrolls sideways"
    assert 'data-first-block="headline"' in dom, "the headline is not at the top"
    shot = tmp_path / "cpu-report.png"
    _chromium_run(binary, page, tmp_path, f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000
    keep = os.environ.get("SPECSAMPLE_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, keep)
    # The overflow check itself works: a page wider than the window is caught.
    wide = tmp_path / "wide.html"
    wide.write_text(
        page.read_text().replace("<body>", '<body><div style="width:5000px">wide</div>', 1)
    )
    dom = _chromium_run(binary, wide, tmp_path, "--dump-dom").stdout
    assert 'data-overflow-x="true"' in dom
