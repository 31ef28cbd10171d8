"""The measurement behind ``specsample e2e``: backends x batch sizes x vocabularies.

For every vocabulary the models are built (or loaded) once; for every batch size the baseline
(target-only decoding) runs once; then every backend runs the speculative loop on the same prompts.
Each run is preceded by a short untimed warm-up (first-call compilation and autotuning stay out of
the numbers). The result is one JSON document, schema ``specsample.e2e/1`` (docs/e2e.md).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .loop import GenerationResult, autoregressive_generate, speculative_generate
from .model import CausalLM
from .projection import project
from .repeat import TimedRuns, timed_runs

SCHEMA = "specsample.e2e/1"
WARMUP_STEPS = 2


@dataclass
class ModelPair:
    """A target and a draft with one vocabulary, and a JSON description of them."""

    target: CausalLM
    draft: CausalLM
    description: dict[str, Any]


@dataclass(frozen=True)
class E2ESettings:
    """What every case of a run shares.

    Attributes:
        num_draft: K, draft tokens per step.
        max_new_tokens: N, tokens generated per request.
        prompt_len: prompt tokens per request.
        mode: ``"random"`` or ``"greedy"``.
        temperature: applied to both models' logits.
        seed: prompts and sampling are seeded from it.
        device: where everything runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        repeat: timed runs per case (and per baseline); every time reported is the median over
            them, phase by phase (:mod:`specsample.decode.repeat`).
    """

    num_draft: int = 4
    max_new_tokens: int = 64
    prompt_len: int = 16
    mode: str = "random"
    temperature: float = 1.0
    seed: int = 0
    device: str = "cpu"
    repeat: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.repeat, int) and not isinstance(self.repeat, bool)):
            raise TypeError(f"repeat: expected an integer >= 1, got {self.repeat!r}")
        if self.repeat < 1:
            raise ValueError(f"repeat: expected an integer >= 1, got {self.repeat!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.num_draft,
            "tokens": self.max_new_tokens,
            "prompt_len": self.prompt_len,
            "mode": self.mode,
            "temperature": self.temperature,
            "seed": self.seed,
            "device": self.device,
            "timer": "cuda_event" if self.device.startswith("cuda") else "perf_counter",
            "repeat": self.repeat,
        }


def _generator(settings: E2ESettings, salt: int) -> torch.Generator:
    return torch.Generator(device=settings.device).manual_seed(settings.seed * 1000 + salt)


def prompts_for(batch: int, vocab: int, settings: E2ESettings) -> torch.Tensor:
    """``[batch, prompt_len]`` int64 prompt ids, uniform over the vocabulary, seeded."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    ids = torch.randint(vocab, (batch, settings.prompt_len), generator=generator)
    return ids.to(settings.device)


def verify_share(result: GenerationResult) -> float:
    """The verify phase's share of the timed phases of a speculative run (0..1)."""
    total = sum(result.phases.values())
    return result.phases.get("verify", 0.0) / total if total > 0 else float("nan")


def _launches(backend: Any, result: GenerationResult, settings: E2ESettings) -> dict | None:
    """Kernel launches of one verify call on its real last inputs (None on the CPU)."""
    if result.last_verify is None or not settings.device.startswith("cuda"):
        return None
    from ..reports.launches import count_launches

    draft_ids, draft_probs, target_probs = result.last_verify
    generator = _generator(settings, 7)

    def call() -> None:
        backend.verify(
            draft_ids, draft_probs, target_probs, mode=settings.mode, generator=generator
        )

    return count_launches(call, settings.device, calls=3)


def run_case(
    backend_name: str,
    pair: ModelPair,
    prompts: torch.Tensor,
    baseline: TimedRuns,
    settings: E2ESettings,
) -> dict[str, Any]:
    """Run one backend's speculative generation and compare it with ``baseline``, the
    target-only runs of the same prompts (:func:`run_baseline`).

    Returns the case record (``status`` ``ok``, ``unavailable`` or ``error`` with a ``reason``).
    """
    from ..contract import BackendUnavailable
    from ..registry import get_backend

    batch, _ = prompts.shape
    case: dict[str, Any] = {
        "backend": backend_name,
        "batch": batch,
        "vocab": pair.target.vocab_size,
        "status": "ok",
        "reason": "",
    }
    try:
        backend = get_backend(backend_name)
    except BackendUnavailable as exc:
        return {**case, "status": "unavailable", "reason": exc.reason}

    def run(timed: bool, max_steps: int | None) -> GenerationResult:
        return speculative_generate(
            pair.target,
            pair.draft,
            prompts,
            backend=backend,
            num_draft=settings.num_draft,
            max_new_tokens=settings.max_new_tokens,
            mode=settings.mode,
            temperature=settings.temperature,
            generator=_generator(settings, 2),
            timed=timed,
            max_steps=max_steps,
            keep_last_verify=timed,
        )

    try:
        run(False, WARMUP_STEPS)
        timed = timed_runs(lambda: run(True, None), settings.repeat)
        result = timed.result
        launches = _launches(backend, result, settings)
    except (ValueError, TypeError, RuntimeError) as exc:
        return {**case, "status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    share = verify_share(result)
    plain = baseline.result
    case.update(
        {
            "baseline": baseline.to_dict(),
            "speculative": timed.to_dict(),
            "speedup": result.tokens_per_s / plain.tokens_per_s,
            "verify_share": share,
            "projection": project(result.tokens_per_s, share),
            "matches_baseline": (
                bool(torch.equal(result.tokens, plain.tokens))
                if settings.mode == "greedy"
                else None
            ),
            "verify_launches": launches,
        }
    )
    return case


def run_baseline(pair: ModelPair, prompts: torch.Tensor, settings: E2ESettings) -> TimedRuns:
    """Target-only decoding of ``prompts`` (after an untimed warm-up), timed
    ``settings.repeat`` times."""

    def run(tokens: int, timed: bool) -> GenerationResult:
        return autoregressive_generate(
            pair.target,
            prompts,
            max_new_tokens=tokens,
            mode=settings.mode,
            temperature=settings.temperature,
            generator=_generator(settings, 1),
            timed=timed,
        )

    run(min(settings.max_new_tokens, WARMUP_STEPS), False)
    return timed_runs(lambda: run(settings.max_new_tokens, True), settings.repeat)


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def run_e2e(
    load: Callable[[int], ModelPair],
    *,
    backends: Sequence[str],
    batches: Sequence[int],
    vocabs: Sequence[int],
    settings: E2ESettings,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every backend x batch size x vocabulary.

    Args:
        load: ``load(vocab) -> ModelPair`` builds or loads the models for one vocabulary size.
        backends: registered backend names (an unavailable one gets a case with its reason).
        batches: batch sizes (requests decoded together).
        vocabs: vocabulary sizes, each passed to ``load``.
        settings: K, tokens, mode, device, ... (:class:`E2ESettings`).
        progress: called with a short label after each case (and each baseline).

    Returns:
        The ``specsample.e2e/1`` document: ``schema``, ``created``, ``environment``,
        ``settings``, ``models`` (one description per vocabulary) and ``cases``.
    """
    from ..reports.environment import collect_environment

    device_type = torch.device(settings.device).type
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": collect_environment(device_type),
        "settings": settings.to_dict(),
        "models": {},
        "cases": [],
    }
    for vocab in vocabs:
        pair = load(vocab)
        doc["models"][str(vocab)] = pair.description
        for batch in batches:
            prompts = prompts_for(batch, vocab, settings)
            baseline = run_baseline(pair, prompts, settings)
            if progress:
                progress(f"baseline B={batch} V={vocab}")
            for name in backends:
                doc["cases"].append(run_case(name, pair, prompts, baseline, settings))
                if progress:
                    progress(f"{name} B={batch} V={vocab}")
        del pair
        if device_type == "cuda":
            torch.cuda.empty_cache()
    return finite(doc)


# -- the document's shape (docs/e2e.md, "JSON") ----------------------------------------------------

_TOP = ("schema", "created", "environment", "settings", "models", "cases")
_SETTINGS = ("k", "tokens", "prompt_len", "mode", "temperature", "seed", "device", "timer")
_CASE = ("backend", "batch", "vocab", "status", "reason")
_CASE_OK = (
    "baseline",
    "speculative",
    "speedup",
    "verify_share",
    "projection",
    "matches_baseline",
    "verify_launches",
)
_RUN = ("new_tokens", "steps", "wall_s", "prefill_s", "tokens_per_s", "phases_s")
_SPEC_PHASES = ("draft", "target", "verify", "bookkeeping")


def check_document(doc: Any) -> dict[str, Any]:
    """Check that ``doc`` has the shape of a ``specsample.e2e/1`` document; return it.

    Raises:
        ValueError: naming the first missing or malformed field (``cases[2].speculative.steps``).
    """

    def need(obj: Any, keys: Sequence[str], where: str) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"{where or 'document'}: expected an object, got {type(obj).__name__}")
        for key in keys:
            if key not in obj:
                raise ValueError(f"{where + '.' if where else ''}{key}: missing")

    need(doc, _TOP, "")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"schema: expected {SCHEMA!r}, got {doc['schema']!r}")
    need(doc["settings"], _SETTINGS, "settings")
    if not isinstance(doc["cases"], list):
        raise ValueError("cases: expected a list")
    for i, case in enumerate(doc["cases"]):
        where = f"cases[{i}]"
        need(case, _CASE, where)
        if case["status"] not in ("ok", "unavailable", "error"):
            raise ValueError(
                f"{where}.status: expected ok, unavailable or error, got {case['status']!r}"
            )
        if case["status"] != "ok":
            continue
        need(case, _CASE_OK, where)
        need(case["baseline"], _RUN, f"{where}.baseline")
        need(
            case["speculative"],
            (*_RUN, "accepted_histogram", "mean_accepted"),
            f"{where}.speculative",
        )
        need(case["speculative"]["phases_s"], _SPEC_PHASES, f"{where}.speculative.phases_s")
        histogram = case["speculative"]["accepted_histogram"]
        if not isinstance(histogram, list) or len(histogram) != doc["settings"]["k"] + 1:
            raise ValueError(f"{where}.speculative.accepted_histogram: expected k + 1 counts")
        share = case["verify_share"]
        if not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ValueError(f"{where}.verify_share: expected a fraction in [0, 1], got {share!r}")
        for j, row in enumerate(case["projection"]):
            need(row, ("factor", "speedup", "tokens_per_s"), f"{where}.projection[{j}]")
    return doc
