"""Every user error of the command line is one line on stderr, naming the file or flag, with a
non-zero exit and no traceback; nothing is overwritten without --force; no partial file is left
under the real name."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from specsample.cli import main
from specsample.cli_options import REPORT_MARKER
from specsample.reports.partial import PartialFile
from specsample.reports.schema import BENCH_SCHEMA, load_results, write_json
from test_reports_schema import CONFORMANCE_FIXTURE


def _cell(backend: str, batch: int, median: float) -> dict:
    return {
        "backend": backend,
        "mode": "random",
        "dtype": "float32",
        "batch": batch,
        "k": 2,
        "vocab": 64,
        "accept": "high",
        "status": "ok",
        "reason": "",
        "timing": {
            "statistic": "median",
            "n": 3,
            "median": median,
            "q1": median,
            "q3": median,
            "iqr": 0.0,
            "samples": [median] * 3,
        },
        "acceptance": {"measured_length": 2.5, "expected_length": 2.4},
        "bytes": {"must_read": 288.0, "input_bytes": 1296},
        "bandwidth": {"achieved_Bps": 288.0 / median, "fraction_of_copy": 1e-4},
        "floor": {
            "launch_s": 2e-6,
            "bytes_s": 1e-8,
            "floor_s": 2e-6,
            "bound": "launch",
            "ratio": median / 2e-6,
        },
        "launches": None,
        "graph": None,
    }


VALID = {
    "schema": BENCH_SCHEMA,
    "created": "2026-01-01T00:00:00+00:00",
    "command": ["specsample", "bench"],
    "config": {"grid": {"batch": [1, 8]}},
    "environment": {"host": "h"},
    "device": {"type": "cpu", "name": "x", "l2_bytes": 1, "launch_floor_s": 1e-6},
    "backends": {"torch-loop": {"available": True, "reason": ""}},
    "cells": [_cell("torch-loop", 1, 1e-5), _cell("torch-loop", 8, 2e-5)],
    "interrupted": False,
    "complete": True,
}


def _with(path: str, value) -> dict:
    """VALID with the field at dotted ``path`` (``cells.0.timing.median``) set, or removed."""
    doc = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value is _REMOVE:
        del node[key]
    else:
        node[key] = value
    return doc


_REMOVE = object()

# name -> file content (bytes), and a fragment the message must contain.
MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "not valid JSON"),
    "truncated": (b'{"schema": "specsample.bench/1"', "not valid JSON"),
    "binary": (bytes(range(256)), "not a UTF-8 text file"),
    "latin1": ('{"created": "caf\xe9"}'.encode("latin-1"), "not a UTF-8 text file"),
    "nested": (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    "huge-int": (
        json.dumps(VALID).replace('"batch": 1,', '"batch": ' + "9" * 5000 + ",").encode(),
        "digits",
    ),
    "nan-literal": (
        json.dumps(VALID).replace('"median": 1e-05', '"median": NaN').encode(),
        "cells[0].timing.median must be a positive number, got NaN",
    ),
    "infinity-literal": (
        json.dumps(VALID).replace('"median": 1e-05', '"median": Infinity').encode(),
        "cells[0].timing.median must be a positive number, got Infinity",
    ),
    "overflow-float": (
        json.dumps(VALID).replace('"median": 1e-05', '"median": 1e400').encode(),
        "cells[0].timing.median must be a positive number, got Infinity",
    ),
    "array": (b"[1, 2]", "must be a JSON object"),
    "number": (b"42", "must be a JSON object"),
}
FIELDS: dict[str, tuple[str, object, str]] = {
    "schema": ("schema", "other/1", 'schema must be "specsample.bench/1"'),
    "no-cells": ("cells", _REMOVE, "cells is missing"),
    "cells-object": ("cells", {}, "cells must be a list"),
    "cell-string": ("cells.0", "x", "cells[0] must be an object"),
    "no-backend": ("cells.0.backend", _REMOVE, "cells[0].backend is missing"),
    "batch-string": ("cells.1.batch", "8", 'cells[1].batch must be an integer >= 0, got "8"'),
    "batch-float": ("cells.1.batch", 8.5, "cells[1].batch must be an integer"),
    "vocab-zero": ("cells.0.vocab", 0, "cells[0].vocab must be an integer >= 1"),
    "accept-bool": ("cells.0.accept", True, "cells[0].accept must be a regime name or a number"),
    "status": ("cells.0.status", "weird", "cells[0].status must be one of"),
    "no-timing": ("cells.0.timing", _REMOVE, "cells[0].timing is missing"),
    "timing-list": ("cells.0.timing", [], "cells[0].timing must be an object"),
    "median-string": (
        "cells.1.timing.median",
        "abc",
        'cells[1].timing.median must be a positive number, got "abc"',
    ),
    "median-null": ("cells.0.timing.median", None, "cells[0].timing.median must be a positive"),
    "median-negative": ("cells.0.timing.median", -1e-5, "must be a positive number, got -1e-05"),
    "median-zero": ("cells.0.timing.median", 0, "must be a positive number, got 0"),
    "median-missing": ("cells.0.timing.median", _REMOVE, "cells[0].timing.median is missing"),
    "iqr-negative": ("cells.0.timing.iqr", -1.0, "cells[0].timing.iqr must be a number >= 0"),
    "iqr-string": ("cells.0.timing.iqr", "x", "cells[0].timing.iqr must be a number"),
    "samples-string": ("cells.0.timing.samples", "x", "cells[0].timing.samples must be a list"),
    "sample-null": ("cells.0.timing.samples.1", None, "cells[0].timing.samples[1] must be"),
    "command": ("command", "specsample bench", "command must be a list"),
    "device-list": ("device", [], "device must be an object"),
    "created-missing": ("created", _REMOVE, "created is missing"),
    "complete-string": ("complete", "yes", "complete must be true or false"),
    "floor-launch": ("device.launch_floor_s", "fast", "device.launch_floor_s must be a number"),
    "no-floor": ("cells.0.floor", _REMOVE, "cells[0].floor is missing"),
    "floor-ratio": ("cells.0.floor.ratio", "1x", "cells[0].floor.ratio must be a number"),
    "no-acceptance": ("cells.1.acceptance", None, "cells[1].acceptance must be an object"),
    "length-null": (
        "cells.0.acceptance.measured_length",
        None,
        "cells[0].acceptance.measured_length must be a number >= 0, got null",
    ),
    "bandwidth-string": (
        "cells.0.bandwidth.fraction_of_copy",
        "x",
        "cells[0].bandwidth.fraction_of_copy must be",
    ),
}


def _write_cases(tmp_path: Path) -> list[tuple[str, Path, str]]:
    cases = []
    for name, (content, fragment) in MALFORMED.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(content)
        cases.append((name, path, fragment))
    for name, (field, value, fragment) in FIELDS.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_with(field, value)))
        cases.append((name, path, fragment))
    cases.append(("folder", tmp_path, "is a folder, expected a JSON file"))
    cases.append(("missing", tmp_path / "nope.json", "no such file"))
    return cases


def _one_line_error(capsys, code: int, fragment: str, expected_code: int = 2) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == expected_code, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got {err!r}"
    assert fragment in lines[0], lines[0]
    return lines[0]


def test_valid_file_passes(tmp_path, capsys):
    good = write_json(VALID, tmp_path / "good.json")
    assert main(["compare", str(good), str(good)]) == 0
    assert main(["report", str(good), "--no-plots", "--out", str(tmp_path / "rep")]) == 0


@pytest.fixture
def cases(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    return _write_cases(folder)


@pytest.mark.parametrize("command", ["report", "compare"])
def test_every_malformed_file_is_one_line(tmp_path, capsys, cases, command):
    good = write_json(VALID, tmp_path / "good.json")
    for name, path, fragment in cases:
        if command == "report":
            argv = ["report", str(path), "--no-plots", "--out", str(tmp_path / f"r-{name}")]
        else:
            argv = ["compare", str(good), str(path)]
        line = _one_line_error(capsys, main(argv), fragment)
        assert str(path) in line, (name, line)
        assert not (tmp_path / f"r-{name}").exists()  # refused before writing anything


def test_malformed_conformance_files(tmp_path, capsys):
    bad = copy.deepcopy(CONFORMANCE_FIXTURE)
    bad["backends"]["broken"]["checks"]["exact"]["outcome"] = "maybe"
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(bad))
    line = _one_line_error(capsys, main(["report", str(path), "--out", str(tmp_path / "o")]), "")
    assert "backends.broken.checks.exact.outcome must be one of" in line
    bad = copy.deepcopy(CONFORMANCE_FIXTURE)
    bad["backends"] = []
    path.write_text(json.dumps(bad))
    _one_line_error(
        capsys, main(["report", str(path), "--out", str(tmp_path / "o")]), "backends must be"
    )


@pytest.fixture
def existing(tmp_path):
    path = tmp_path / "existing.json"
    path.write_text("not mine\n")
    return path


def _flag_cases(tmp_path: Path, existing: Path) -> list[tuple[list[str], str]]:
    tiny = ["--preset", "tiny", "--backend", "torch-loop", "--no-progress"]
    out = ["--out", str(tmp_path / "r.json")]
    afile = tmp_path / "afile"
    afile.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    cases = [
        (
            ["bench", "--vocab", "0", *out],
            "argument --vocab: expected comma-separated integers >= 1",
        ),
        (["bench", "--batch", "0", *out], "argument --batch"),
        (["bench", "--batch", "1,x", *out], "argument --batch"),
        (["bench", "--k", "-1", *out], "argument --k"),
        (
            ["bench", "--device", "tpu", *out],
            "argument --device: expected auto, cpu, cuda or cuda:N",
        ),
        (["bench", "--threads", "0", *out], "argument --threads: expected an integer >= 1"),
        (["bench", "--threads", "two", *out], "argument --threads"),
        (["bench", "--budget", "0", *out], "argument --budget: expected a positive number"),
        (["bench", "--target-time", "nan", *out], "argument --target-time"),
        (["bench", "--min-samples", "0", *out], "argument --min-samples"),
        (["bench", "--max-errors", "-1", *out], "argument --max-errors"),
        (["bench", "--dtype", "float64", *out], "argument --dtype"),
        (["bench", "--mode", "beam", *out], "argument --mode"),
        (["bench", "--accept", "weird", *tiny, *out], "--accept weird: acceptance regime"),
        (["bench", "--accept", "rate=2", *tiny, *out], "--accept rate=2: alpha must be in [0, 1]"),
        (["bench", "--accept", "rate=x", *tiny, *out], "--accept rate=x: rate=ALPHA needs"),
        (["bench", "--accept", "99", *tiny, *out], "--accept 99: acceptance_length must be in"),
        (["bench", "--backend", "nope", *tiny, *out], "--backend: unknown backend 'nope'"),
        (["bench", "--backends", "a,,b", *out], "argument --backends"),
        (["bench", "--backend", "", *out], "argument --backend"),
        (["bench", *tiny, "--out", ""], "--out: expected a file path, got an empty string"),
        (["bench", *tiny, "--out", str(tmp_path)], "is a folder; give a file path"),
        (["bench", *tiny, "--out", str(existing)], "the file exists; pass --force"),
        (["bench", *tiny, "--out", str(afile / "r.json")], "is a file, not a folder"),
        (["conform", "--json", str(tmp_path), "--backend", "torch-loop"], "--json"),
        (["conform", "--json", str(existing), "--backend", "torch-loop"], "pass --force"),
        (["conform", "--json", "", "--backend", "torch-loop"], "--json: expected a file path"),
        (["conform", "-j", "0"], "argument -j/--jobs"),
        (["conform", "--backends", ","], "argument --backends"),
        (["conform", "--level", "huge"], "argument --level"),
        (["report", str(existing), "--out", str(tmp_path / "o")], "not valid JSON"),
        (["run", "--out", str(existing), "--no-conformance", *tiny], "exists and is not a folder"),
        (["run", "--out", str(foreign), "--no-conformance", *tiny], "pass --force"),
        (["run", "-j", "0"], "argument -j/--jobs"),
        (["run", "--vocab", "0"], "argument --vocab"),
        (["run", "--device", "tpu"], "argument --device"),
        (["run", "--backend", "nope", "--no-conformance", *tiny[:2]], "unknown backend 'nope'"),
        (["compare", "--noise-factor", "-1", "a", "b"], "argument --noise-factor"),
        (["compare", "--min-change", "nan", "a", "b"], "argument --min-change"),
        (["compare", "only-one.json"], "the following arguments are required: new"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["--plugins"], "argument --plugins: expected one argument"),
    ]
    if not torch.cuda.is_available():
        cases.append((["bench", "--device", "cuda", *tiny, *out], "--device cuda: device 'cuda'"))
    return cases


def test_bad_flags_are_one_line(tmp_path, capsys, existing, monkeypatch):
    import specsample.conformance.runner as runner

    def must_not_run(*a, **k):
        raise AssertionError("the suite ran before the bad flag was refused")

    monkeypatch.setattr(runner, "run", must_not_run)
    for argv, fragment in _flag_cases(tmp_path, existing):
        code = main(argv)
        line = _one_line_error(capsys, code, fragment)
        assert line.startswith("specsample"), line
    assert existing.read_text() == "not mine\n"
    assert not (tmp_path / "r.json").exists()
    assert not list(tmp_path.glob(".*.partial"))
    assert not (tmp_path / "foreign" / REPORT_MARKER).exists()


def test_report_and_report_folders(tmp_path, capsys):
    good = write_json(VALID, tmp_path / "good.json")
    out = tmp_path / "rep"
    assert main(["report", str(good), "--no-plots", "--out", str(out)]) == 0
    assert (out / REPORT_MARKER).exists()
    assert main(["report", str(good), "--no-plots", "--out", str(out)]) == 0  # ours: replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    capsys.readouterr()
    _one_line_error(
        capsys,
        main(["report", str(good), "--no-plots", "--out", str(foreign)]),
        "holds files specsample did not write; pass --force",
    )
    assert main(["report", str(good), "--no-plots", "--out", str(foreign), "--force"]) == 0
    assert (foreign / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(good), "--no-plots", "--out", str(empty)]) == 0


def test_compare_refuses_garbage_medians(tmp_path, capsys):
    good = write_json(VALID, tmp_path / "good.json")
    for value, shown in ((float("nan"), "NaN"), (-1e-5, "-1e-05"), (0.0, "0.0"), ("1", '"1"')):
        doc = _with("cells.0.timing.median", value)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(doc))  # Python writes NaN as a bare NaN literal
        for argv in (["compare", str(good), str(path)], ["compare", str(path), str(good)]):
            line = _one_line_error(capsys, main(argv), str(path))
            assert "median" in line and ("NaN" in line if shown == "NaN" else shown in line)


def test_bench_writes_atomically_and_never_overwrites(tmp_path, capsys, existing):
    args = ["bench", "--preset", "tiny", "--backend", "torch-loop", "--batch", "1", "--k", "1"]
    args += ["--mode", "greedy", "--accept", "high", "--no-progress", "--no-launches"]
    out = tmp_path / "r.json"
    assert main([*args, "--out", str(out)]) == 0
    assert load_results(out)["complete"] is True
    assert not list(tmp_path.glob(".*.partial"))
    capsys.readouterr()
    _one_line_error(capsys, main([*args, "--out", str(out)]), "the file exists; pass --force")
    assert main([*args, "--out", str(existing), "--force"]) == 0
    assert load_results(existing)["complete"] is True


def test_a_failed_bench_leaves_no_file(tmp_path, monkeypatch):
    import specsample.reports.runner as runner

    def crash(config, *, out_path, command, progress):
        write_json({"half": True}, out_path)  # what a sweep saves between groups
        raise RuntimeError("a backend crashed the process state")

    monkeypatch.setattr(runner, "run_bench", crash)
    out = tmp_path / "r.json"
    with pytest.raises(RuntimeError):
        main(["bench", "--preset", "tiny", "--backend", "torch-loop", "--out", str(out)])
    assert not out.exists() and os.listdir(tmp_path) == []


def test_partial_file(tmp_path):
    final = tmp_path / "sub" / "r.json"
    with PartialFile(final) as partial:
        partial.path.write_text("{}")
        assert partial.path.name.startswith(".r.json.") and not final.exists()
        partial.commit()
    assert final.read_text() == "{}" and os.listdir(final.parent) == ["r.json"]
    with pytest.raises(KeyError), PartialFile(final, force=True) as partial:
        partial.path.write_text("half")
        raise KeyError("crash")
    assert final.read_text() == "{}" and os.listdir(final.parent) == ["r.json"]
