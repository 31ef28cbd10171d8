"""A small decoder-only transformer in plain PyTorch, with a ragged KV cache.

The generation loop (:mod:`specsample.decode.loop`) talks to a model through one method,
``forward(tokens, start) -> logits``: the tokens of every request are written at their own
positions ``start[b] + i``, and each query attends to the keys at positions ``<= start[b] + i``.
So a batch of requests of different lengths needs no padding on the left, and rolling back
rejected draft tokens costs nothing: the loop just starts the next write at the old position
(the stale entries are masked out and then overwritten). No host synchronization happens inside
``forward``.

The model uses no positional encoding (the causal mask alone orders the tokens) and no final norm
before the vocabulary projection: the size of the residual stream, set mostly by the embedding row
of the current token, sets how peaked the next-token distribution is, so some positions are
confident and others uncertain, as in text. The cost stays in the parts every transformer has
(attention, MLP, the vocabulary projection).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class CausalLM(Protocol):
    """What the generation loop needs from a model.

    Attributes:
        vocab_size: V, the number of logits per position.
    """

    vocab_size: int

    def reset(self, batch_size: int, capacity: int) -> None:
        """Start a new batch of ``batch_size`` requests of at most ``capacity`` positions each."""

    def forward(self, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Write ``tokens`` [B, T] int64 at positions ``start[b] + i`` and return the logits
        ``[B, T, V]`` (float32) of the next token after each of them. ``start`` is [B] int64."""


@dataclass(frozen=True)
class TinyLMConfig:
    """Shape of a :class:`TinyLM`.

    Attributes:
        vocab_size: V.
        d_model: width of the residual stream.
        n_layers: transformer blocks.
        n_heads: attention heads (``d_model`` must be a multiple).
        d_ff: hidden width of the MLP.
        branch_scale: scale of each block's output projections at initialization (the size of a
            block's contribution to the residual stream, relative to the token embedding).
        logit_scale: the standard deviation of a logit at initialization for an embedding row of
            typical size; larger means peakier next-token distributions.
        embed_spread: the embedding rows' norms are ``exp(embed_spread * z)`` times typical, ``z``
            standard normal per token: how much the confidence varies from token to token.
        zipf: every logit gets the fixed bias ``-zipf * log(1 + id)``: low ids are frequent, as
            in a vocabulary sorted by frequency (0 for none).
        output_vocab: compute logits for the ids ``0..output_vocab-1`` only and give the others
            probability 0 (a draft with a reduced vocabulary, which skips most of the vocabulary
            projection's cost); None for the whole vocabulary.
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    branch_scale: float = 0.1
    logit_scale: float = 6.0
    embed_spread: float = 0.4
    zipf: float = 0.0
    output_vocab: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if self.output_vocab is not None and not 1 <= self.output_vocab <= self.vocab_size:
            raise ValueError(
                f"output_vocab: expected None or an integer in [1, {self.vocab_size}], "
                f"got {self.output_vocab!r}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model: expected a multiple of n_heads={self.n_heads}, got {self.d_model}"
            )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.attn_norm = nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d)
        self.up = nn.Linear(d, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """``x`` [B, T, d]; caches [B, capacity, H, d/H] (written in place at ``positions``
        [B, T]); ``mask`` [B, 1, T, capacity] bool, True where a query may attend."""
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, h, d // h).unbind(dim=2)
        cache_k[rows, positions] = k
        cache_v[rows, positions] = v
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), cache_k.transpose(1, 2), cache_v.transpose(1, 2), attn_mask=mask
        )
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


class TinyLM(nn.Module):
    """A decoder-only transformer: embedding, ``blocks``, vocabulary projection.

    Two models may share modules: :func:`specsample.decode.demo.demo_pair` builds a draft from the
    target's embedding, head and first blocks. Each model keeps its own KV cache.

    Args:
        cfg: the shape; ``cfg.n_layers`` must equal ``len(blocks)`` when ``blocks`` is given.
        embed, blocks, head: modules to use (shared with another model) instead of new ones.
    """

    def __init__(
        self,
        cfg: TinyLMConfig,
        *,
        embed: nn.Embedding | None = None,
        blocks: list[Block] | None = None,
        head: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        if blocks is not None and len(blocks) != cfg.n_layers:
            raise ValueError(f"blocks: expected {cfg.n_layers} blocks, got {len(blocks)}")
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.embed = embed if embed is not None else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(
            blocks if blocks is not None else [Block(cfg) for _ in range(cfg.n_layers)]
        )
        self.head = head if head is not None else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._bias: torch.Tensor | None = (
            None  # [V] float32, built by reset() on the model's device
        )
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._positions: torch.Tensor | None = None

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> TinyLM:
        """Fill every parameter deterministically from ``generator`` (a CPU generator: the same
        seed gives the same weights on every machine). Returns ``self``."""
        cfg = self.cfg
        d = cfg.d_model

        def normal(param: torch.Tensor, std: float) -> None:
            values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
            param.copy_(values.to(param.dtype))

        normal(self.embed.weight, 1.0)
        spread = torch.exp(cfg.embed_spread * torch.randn(cfg.vocab_size, 1, generator=generator))
        self.embed.weight.mul_(spread.to(self.embed.weight.dtype))
        normal(self.head.weight, cfg.logit_scale / d**0.5)
        for block in self.blocks:
            block.attn_norm.reset_parameters()
            block.mlp_norm.reset_parameters()
            normal(block.qkv.weight, 1.0 / d**0.5)
            normal(block.out.weight, cfg.branch_scale / d**0.5)
            normal(block.up.weight, 1.0 / d**0.5)
            normal(block.down.weight, cfg.branch_scale / cfg.d_ff**0.5)
        return self

    def reset(self, batch_size: int, capacity: int) -> None:
        """Allocate an empty KV cache for ``batch_size`` requests of ``capacity`` positions."""
        p = self.head.weight
        h = self.cfg.n_heads
        shape = (batch_size, capacity, h, self.cfg.d_model // h)
        self._cache = [
            (
                torch.zeros(shape, device=p.device, dtype=p.dtype),
                torch.zeros(shape, device=p.device, dtype=p.dtype),
            )
            for _ in self.blocks
        ]
        self._positions = torch.arange(capacity, device=p.device)
        ids = torch.arange(self.vocab_size, dtype=torch.float32, device=p.device)
        self._bias = -self.cfg.zipf * torch.log1p(ids)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` [B, T] int64 written at positions ``start[b] + i`` (``start`` [B] int64).

        Returns:
            ``[B, T, V]`` float32 logits: row ``i`` is the distribution of the token after
            position ``start[b] + i``.

        Positions must stay below the ``capacity`` given to :meth:`reset` (not checked here: a
        check would synchronize with the device; the loop sizes the cache).
        """
        if not self._cache or self._positions is None or self._bias is None:
            raise RuntimeError("call reset(batch_size, capacity) before forward")
        b, t = tokens.shape
        positions = start[:, None] + torch.arange(t, device=tokens.device)
        rows = torch.arange(b, device=tokens.device)[:, None]
        mask = (self._positions[None, None, :] <= positions[:, :, None])[:, None]
        x = self.embed(tokens)
        for block, (cache_k, cache_v) in zip(self.blocks, self._cache, strict=True):
            x = block(x, cache_k, cache_v, rows, positions, mask)
        m = self.cfg.output_vocab
        if m is None or m == self.vocab_size:
            return self.head(x).float() + self._bias
        logits = x.new_full((b, t, self.vocab_size), float("-inf"), dtype=torch.float32)
        logits[..., :m] = F.linear(x, self.head.weight[:m]).float() + self._bias[:m]
        return logits
