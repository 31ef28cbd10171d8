"""Demo models that need no download: a target and a cheaper draft, weights drawn from a seed.

The draft is the target with most of its blocks skipped: it shares the target's embedding, its
first ``draft_layers`` blocks and its vocabulary projection (the same tensors, no copy), and runs
only those. The skipped blocks change the target's next-token distribution by a controlled amount
(``branch_scale``), so the draft agrees with the target often but not always, as a real draft
does; the logit scale makes the distributions peaked, as a language model's are. Token ids are
ranked by frequency (a Zipf bias on the logits), and the draft predicts only the most frequent
quarter of the vocabulary (from 256 tokens up), as drafts with a reduced vocabulary do: that keeps
its vocabulary projection cheap. Mean accepted lengths are measured, never assumed (docs/e2e.md
lists what the presets give).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import TinyLM, TinyLMConfig


@dataclass(frozen=True)
class DemoSize:
    """One preset: the target's shape and how many of its blocks the draft runs."""

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    draft_layers: int
    branch_scale: float
    logit_scale: float = 5.0
    embed_spread: float = 0.4
    zipf: float = 1.5


# the draft predicts the first vocab // DRAFT_VOCAB_DIVISOR ids (the most frequent ones) when the
# vocabulary has at least MIN_REDUCED_VOCAB tokens
DRAFT_VOCAB_DIVISOR = 4
MIN_REDUCED_VOCAB = 256

SIZES: dict[str, DemoSize] = {
    # for tests: milliseconds per forward on one CPU core
    "tiny": DemoSize(32, 2, 2, 64, 1, 0.1),
    # the CPU demo
    "small": DemoSize(256, 12, 4, 1024, 1, 0.07),
    # the GPU demo
    "medium": DemoSize(2048, 12, 16, 8192, 1, 0.06),
}


@dataclass
class DemoPair:
    """A target, its draft (sharing weights) and the configs that built them."""

    target: TinyLM
    draft: TinyLM
    size: str
    seed: int

    def describe(self) -> dict[str, object]:
        """The shapes, for the result JSON."""
        return {
            "kind": "demo",
            "size": self.size,
            "seed": self.seed,
            "target": self.target.cfg.to_dict(),
            "draft_layers": self.draft.cfg.n_layers,
            "draft_vocab": self.draft.cfg.output_vocab,
            "dtype": str(self.target.head.weight.dtype).removeprefix("torch."),
            "target_params": _count(self.target),
            "draft_params": _count(self.draft),
        }


def _count(model: TinyLM) -> int:
    """Weights one forward multiplies by: the blocks and the rows of the vocabulary projection it
    uses (the embedding is a lookup, left out)."""
    blocks = sum(p.numel() for p in model.blocks.parameters())
    rows = model.cfg.output_vocab or model.cfg.vocab_size
    return blocks + rows * model.cfg.d_model


def demo_pair(
    vocab_size: int,
    size: str = "small",
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DemoPair:
    """Build the demo target and draft for ``vocab_size`` tokens.

    Args:
        vocab_size: V (the demo is run at 32000 and 128256).
        size: a key of :data:`SIZES` (``"tiny"``, ``"small"``, ``"medium"``).
        seed: weights are a deterministic function of ``(vocab_size, size, seed)``; they are drawn
            on the CPU, then moved, so every device gets the same weights.
        device, dtype: where the models live and their parameter dtype (logits are float32).

    Raises:
        ValueError: unknown ``size`` or a bad ``vocab_size``, naming the argument.
    """
    if size not in SIZES:
        raise ValueError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
        raise ValueError(f"vocab_size: expected an integer >= 2, got {vocab_size!r}")
    s = SIZES[size]
    cfg = TinyLMConfig(
        vocab_size=vocab_size,
        d_model=s.d_model,
        n_layers=s.n_layers,
        n_heads=s.n_heads,
        d_ff=s.d_ff,
        branch_scale=s.branch_scale,
        logit_scale=s.logit_scale,
        embed_spread=s.embed_spread,
        zipf=s.zipf,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        target = TinyLM(cfg)
    target = target.to_empty(device="cpu").to(dtype)
    target.init_weights(generator)
    target = target.to(device).eval()
    draft_vocab = (
        vocab_size // DRAFT_VOCAB_DIVISOR if vocab_size >= MIN_REDUCED_VOCAB else vocab_size
    )
    draft_cfg = TinyLMConfig(
        **{**cfg.to_dict(), "n_layers": s.draft_layers, "output_vocab": draft_vocab}
    )
    draft = TinyLM(
        draft_cfg,
        embed=target.embed,
        blocks=list(target.blocks[: s.draft_layers]),
        head=target.head,
    ).eval()
    return DemoPair(target=target, draft=draft, size=size, seed=seed)


def demo_prompts(
    batch_size: int,
    length: int,
    vocab_size: int,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[batch_size, length]`` int64 prompt tokens drawn uniformly from the vocabulary (seeded)."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(vocab_size, (batch_size, length), generator=generator).to(device)
