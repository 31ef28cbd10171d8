"""Optional: a local Hugging Face ``transformers`` causal LM behind the loop's model interface.

Needs the ``transformers`` package; nothing else in specsample imports it. Models load from local
folders only (``local_files_only=True``): no download is ever attempted.

The adapter keeps no KV cache: every ``forward`` runs the model over the request's whole token
buffer (prompt, kept tokens and the new ones; positions past the new tokens hold stale ids, which
a causal model cannot see from the positions that are read). That is simple and exact for any
``AutoModelForCausalLM``, and costs a full-sequence forward per call: fine for checking a real
draft/target pair, not for timing one (use the demo models, which keep a KV cache, for timing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .e2e import ModelPair


class HFCausalLM:
    """Wrap a ``transformers`` causal LM as a :class:`~specsample.decode.model.CausalLM`.

    Args:
        model: an ``AutoModelForCausalLM`` instance (already on its device, in eval mode).
        vocab_size: the number of logits it returns per position.
    """

    def __init__(self, model: Any, vocab_size: int) -> None:
        self.model = model
        self.vocab_size = vocab_size
        self._tokens: torch.Tensor | None = None

    def reset(self, batch_size: int, capacity: int) -> None:
        device = next(self.model.parameters()).device
        limit = _max_positions(self.model)  # the loop writes below prompt + N + 2K + 2 positions;
        if limit is not None:  # the rest of its rounded-up capacity need not exist here
            capacity = min(capacity, limit)
        self._tokens = torch.zeros(batch_size, capacity, dtype=torch.int64, device=device)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B, T] int64 written at ``start[b] + i``; returns ``[B, T, V]`` float32."""
        if self._tokens is None:
            raise RuntimeError("call reset(batch_size, capacity) before forward")
        b, t = tokens.shape
        positions = start[:, None] + torch.arange(t, device=tokens.device)
        rows = torch.arange(b, device=tokens.device)[:, None]
        self._tokens[rows, positions] = tokens
        logits = self.model(input_ids=self._tokens, use_cache=False).logits
        return logits[rows, positions, : self.vocab_size].float()


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        from ..cli_options import UsageError

        raise UsageError(
            "--target: loading a model folder needs the transformers package "
            "(pip install transformers); --demo needs nothing else"
        ) from None
    return transformers


def _vocab(path: str, transformers: Any) -> dict[str, int] | None:
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # a folder without a tokenizer: the logits' width is compared instead
        return None
    return tokenizer.get_vocab()


def _max_positions(model: Any) -> int | None:
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    return getattr(config, "max_position_embeddings", None)


def _flags(target_path: str, draft_path: str) -> tuple[tuple[str, str], ...]:
    return (("--target", target_path), ("--draft", draft_path))


def _config_vocab(path: str, flag: str, transformers: Any) -> int | None:
    """The vocabulary size a model folder's config declares (None when it declares none)."""
    from ..cli_options import UsageError

    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise UsageError(f"{flag} {path}: cannot read the model's config: {exc}") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def load_pair(target_path: str, draft_path: str, *, device: str, dtype: torch.dtype) -> ModelPair:
    """Load a target and a draft from local folders and check they share one vocabulary.

    Raises:
        UsageError: transformers missing, a path that is not a folder, or tokenizers / vocabulary
            sizes that differ between the two models (naming both).
    """
    from ..cli_options import UsageError

    transformers = _require_transformers()
    for flag, path in _flags(target_path, draft_path):
        if not Path(path).is_dir():
            raise UsageError(f"{flag} {path}: not a folder (a local transformers model folder)")
    widths = [
        _config_vocab(path, flag, transformers) for flag, path in _flags(target_path, draft_path)
    ]
    if None not in widths and widths[0] != widths[1]:
        raise UsageError(
            f"--draft {draft_path}: its vocabulary has {widths[1]} tokens but the target's has "
            f"{widths[0]}; speculative decoding needs one vocabulary"
        )
    target_vocab, draft_vocab = _vocab(target_path, transformers), _vocab(draft_path, transformers)
    if target_vocab is not None and draft_vocab is not None and target_vocab != draft_vocab:
        raise UsageError(
            f"--draft {draft_path}: its tokenizer differs from the target's "
            f"({len(draft_vocab)} vs {len(target_vocab)} entries); speculative decoding needs one "
            "vocabulary"
        )
    transformers.utils.logging.disable_progress_bar()  # the command shows its own progress
    models = []
    for flag, path in _flags(target_path, draft_path):
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=dtype
            )
        except Exception as exc:
            raise UsageError(f"{flag} {path}: cannot load a causal LM: {exc}") from None
        models.append(model.to(device).eval())
    target, draft = models
    sizes = [m.get_output_embeddings().weight.shape[0] for m in models]
    if sizes[0] != sizes[1]:
        raise UsageError(
            f"--draft {draft_path}: it has {sizes[1]} output logits but the target has "
            f"{sizes[0]}; speculative decoding needs one vocabulary"
        )
    description = {
        "kind": "transformers",
        "target": target_path,
        "draft": draft_path,
        "target_params": sum(p.numel() for p in target.parameters()),
        "draft_params": sum(p.numel() for p in draft.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "kv_cache": False,
        "max_positions": min(
            (n for n in (_max_positions(m) for m in models) if n is not None), default=None
        ),
    }
    return ModelPair(HFCausalLM(target, sizes[0]), HFCausalLM(draft, sizes[1]), description)
