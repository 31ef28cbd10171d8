"""The optional transformers adapter: tiny random-weight models saved to local folders."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (an optional extra of specsample e2e)"
)

import specsample  # noqa: E402
from specsample.cli import main  # noqa: E402
from specsample.decode.hf import load_pair  # noqa: E402
from specsample.decode.loop import autoregressive_generate, speculative_generate  # noqa: E402


def _save(path, vocab, layers, seed):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return (
        _save(root / "target", 64, 2, 0),
        _save(root / "draft", 64, 1, 1),
        _save(root / "other", 65, 1, 2),
    )


def test_greedy_equals_generate(folders):
    target_path, draft_path, _ = folders
    pair = load_pair(target_path, draft_path, device="cpu", dtype=torch.float32)
    prompts = torch.randint(64, (2, 5), generator=torch.Generator().manual_seed(0))
    spec = speculative_generate(
        pair.target,
        pair.draft,
        prompts,
        backend=specsample.get_backend("torch-vectorized"),
        num_draft=3,
        max_new_tokens=8,
        mode="greedy",
    )
    plain = autoregressive_generate(pair.target, prompts, max_new_tokens=8, mode="greedy")
    model = pair.target.model
    reference = model.generate(
        prompts,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
        attention_mask=torch.ones_like(prompts),
    )[:, 5:]
    assert torch.equal(plain.tokens, reference)
    assert torch.equal(spec.tokens, reference)


def test_cli_runs_a_local_pair(folders, capsys):
    target_path, draft_path, _ = folders
    rc = main(
        [
            "e2e",
            "--target",
            target_path,
            "--draft",
            draft_path,
            "--batch",
            "2",
            "--tokens",
            "5",
            "--k",
            "2",
            "--backend",
            "torch-vectorized",
            "--threads",
            "1",
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr()
    assert "V=64 B=2 K=2" in capsys.readouterr().out


def test_mismatched_vocabularies_are_refused(folders, capsys):
    target_path, _, other = folders
    assert main(["e2e", "--target", target_path, "--draft", other, "-q"]) == 2
    err = capsys.readouterr().err
    assert "its vocabulary has 65 tokens but the target's has 64" in err and err.count("\n") == 1


def test_requests_longer_than_the_context_are_refused(folders, capsys):
    target_path, draft_path, _ = folders
    argv = ["e2e", "--target", target_path, "--draft", draft_path, "--tokens", "120", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--tokens 120: a request needs up to 146 positions" in err and "hold 128" in err
