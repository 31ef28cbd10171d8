"""docs/contract.md and README.md: their examples run, and say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import specsample
import torch

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_contract_examples_run_and_match_their_comments():
    blocks = [b for b in python_blocks(ROOT / "docs" / "contract.md") if "import torch" in b]
    assert blocks, "docs/contract.md lost its runnable example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/contract.md", "exec"), namespace)
    out = namespace["out"]
    assert out.status.tolist() == [0, int(specsample.Status.BAD_DRAFT_ID)]
    assert out.token_ids.tolist() == [[1, 2, 0], [-1, -1, -1]]
    assert out.num_emitted.tolist() == [3, 0]
    with pytest.raises(ValueError, match=re.escape("request 1: draft_token_ids holds an id")):
        out.raise_for_status()


def test_contract_page_names_every_status_bit():
    text = (ROOT / "docs" / "contract.md").read_text()
    for flag in specsample.Status:
        if flag:
            assert f"| {int(flag)} | `{flag.name}` |" in text


def test_readme_status_example():
    block = next(b for b in python_blocks(ROOT / "README.md") if "out.status" in b and "9]]" in b)
    namespace = {"specsample": specsample, "torch": torch}
    code = block.replace("out.raise_for_status()", "pass  # raise_for_status checked below")
    exec(compile(code, "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.status.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"^request 1: draft_token_ids holds an id outside"):
        out.raise_for_status()
