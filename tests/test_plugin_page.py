"""docs/writing-a-backend-plugin.md: its code blocks run, its minimal plugin passes the
conformance suite, and its reference tables list every field with its real default."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest (a dependency of specsample) depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-a-backend-plugin.md"


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _minimal_files() -> dict[str, str]:
    pattern = re.compile(r"<!-- minimal: (\S+) -->\n```\w*\n(.*?)```", re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(_text())}


def _table_rows(heading: str) -> dict[str, list[str]]:
    """``{first cell without backticks: other cells}`` of the first table after ``heading``."""
    section = _text().split(heading, 1)[1]
    rows = {}
    for line in section.splitlines():
        if rows and not line.startswith("|"):
            break
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_python_block_compiles():
    blocks = re.findall(r"```python\n(.*?)```", _text(), re.S)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        compile(block, f"{DOC.name} python block {i}", "exec")


def test_capabilities_table_gives_every_field_and_its_default():
    from specsample import Capabilities

    rows = _table_rows("### `Capabilities` fields and defaults")
    fields = {f.name: f.default for f in dataclasses.fields(Capabilities)}
    assert set(rows) == set(fields)
    for name, default in fields.items():
        shown = rows[name][0].strip("`")
        assert shown.replace('"', "'") == repr(default), f"{name}: page says {shown}"
    assert "Leaving it out claims CUDA too" in rows["devices"][1]


def test_verify_inputs_table_lists_every_field():
    from specsample.contract import VerifyInputs

    rows = _table_rows("### `VerifyInputs` fields")
    assert set(rows) == {f.name for f in dataclasses.fields(VerifyInputs)}


def test_minimal_plugin_is_short_and_passes_conformance(tmp_path, monkeypatch):
    from specsample import registry
    from specsample.conformance.runner import run

    files = _minimal_files()
    module = files["my_first_backend.py"]
    assert len(module.strip().splitlines()) <= 25
    meta = tomllib.loads(files["pyproject.toml"])
    entry_points = meta["project"]["entry-points"]["specsample.backends"]
    assert entry_points == {"first": "my_first_backend"}
    assert meta["project"]["dependencies"] == ["specsample"]

    # Installed as pip would: the module on sys.path and a dist-info with the entry point.
    (tmp_path / "my_first_backend.py").write_text(module)
    dist = tmp_path / "my_first_backend-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: my-first-backend\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[specsample.backends]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset()
    try:
        infos = {i.name: i for i in registry.list_backends()}
        assert infos["first"].available and infos["first"].plugin == "first"
        outcome = run(["first"], "fast", quiet=True, progress=False)
    finally:
        registry.reset()
    checks = outcome.results["backends"]["first"]["checks"]
    summary = outcome.results["backends"]["first"]["summary"]
    failing = {k: v["details"] for k, v in checks.items() if v["outcome"] in ("fail", "error")}
    assert not failing, failing
    assert summary["pass"] > 10
    not_claimed = {k for k, v in checks.items() if v["outcome"] == "not-claimed"}
    page = _text()
    for name in not_claimed:  # every not-claimed check it gets is explained on the page
        assert f"`{name}`" in page, f"{name} is not claimed but the page does not explain it"
