"""The conformance checks: a registry of named checks and :func:`run_check`, which runs one.

A check is a function ``check(target) -> str | None`` registered under a stable short name
(``"contract.padding"``, ``"exact.random"``, ``"stats.losslessness"``, ...). It passes by returning
(optionally a details string), fails by raising :class:`CheckFailed` (an ``AssertionError``) whose
message names the property that broke, and reports "not claimed" by raising :class:`NotClaimed`
when the backend does not claim what the check needs (a dtype, a mode, CUDA graphs...). Any other
exception is an ``error``: the backend (or the check) crashed.

The checks live in ``check_contract.py``, ``check_exact.py``, ... next to this module. The same
function runs under pytest (``specsample.conformance.test_conformance``), under
``specsample conform`` (which runs pytest) and from the project's own tests, so all three give the
same verdict.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from specsample.contract import Backend, Capabilities, VerifyOutput

LEVELS = ("fast", "full")
OUTCOMES = ("pass", "fail", "not-claimed", "error")
# Modules holding the checks, in the order a report lists them.
CHECK_MODULES = (
    "contract",
    "exact",
    "greedy",
    "stats",
    "repro",
    "edge",
    "badinput",
    "status",
    "claims",
    "serving",
    "tree",
    "tree_length",
    "traversal",
    "block",
    "fuzz",
)


class CheckFailed(AssertionError):
    """A property of the contract does not hold; the message says which and where."""


class NotClaimed(Exception):
    """The check needs something the backend does not claim (or this run cannot give it)."""


@dataclass(frozen=True)
class Check:
    """One named check. ``levels``: the levels that include it."""

    name: str
    func: Callable[[Target], str | None]
    levels: tuple[str, ...]
    doc: str


_CHECKS: dict[str, Check] = {}


def check(name: str, *, levels: tuple[str, ...] = LEVELS) -> Callable:
    """Decorator registering ``func`` as the check ``name``."""

    def deco(func: Callable[[Target], str | None]) -> Callable[[Target], str | None]:
        if name in _CHECKS and _CHECKS[name].func is not func:
            raise ValueError(f"check {name!r} registered twice")
        paragraph = (func.__doc__ or "").strip().split("\n\n")[0]
        doc = " ".join(line.strip() for line in paragraph.splitlines())
        _CHECKS[name] = Check(name, func, levels, doc)
        return func

    return deco


def _load() -> None:
    # The checks live in sibling modules check_<name>.py (flat: no subpackage to list in
    # pyproject's packages).
    package = __name__.rsplit(".", 1)[0]
    for module in CHECK_MODULES:
        importlib.import_module(f"{package}.check_{module}")


def all_checks(level: str | None = None) -> list[Check]:
    """Every registered check (imports the check modules, hence torch), optionally for one level."""
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    _load()
    return [c for c in _CHECKS.values() if level is None or level in c.levels]


def check_names(level: str | None = None) -> list[str]:
    """The names of :func:`all_checks`, in report order."""
    return [c.name for c in all_checks(level)]


def get_check(name: str) -> Check:
    _load()
    try:
        return _CHECKS[name]
    except KeyError:
        raise KeyError(f"no conformance check named {name!r}") from None


@dataclass
class Target:
    """The backend under test, the device the checks run on, and the level.

    The device is ``cuda`` when the backend claims it and a CUDA device is present, else ``cpu``.
    ``cache`` keeps results shared by several checks (the contract checks' calls).
    """

    name: str
    backend: Backend
    level: str
    device: torch.device
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    @property
    def full(self) -> bool:
        return self.level == "full"

    def verify(self, *args: Any, **kwargs: Any) -> VerifyOutput:
        if kwargs.get("uniforms") is not None and not getattr(self.capabilities, "uniforms", True):
            return self._verify_own_randomness(*args, **kwargs)
        return self.backend.verify(*args, **kwargs)

    def _verify_own_randomness(self, *args: Any, **kwargs: Any) -> VerifyOutput:
        """For a backend that draws its own random numbers (``Capabilities.uniforms`` False): bad
        uniforms raise as they would for any backend; valid ones are replaced by a seeded
        generator, and the output is marked so that comparisons with the reference's tokens
        report "not claimed" while the structural checks still run."""
        import dataclasses

        import torch
        from specsample.validation import validate_inputs

        names = ("draft_token_ids", "draft_probs", "target_probs")
        given = dict(zip(names, args, strict=False))  # positional ones; the rest by keyword
        given.update({k: kwargs[k] for k in names if k in kwargs})
        validate_inputs(
            given["draft_token_ids"],
            given.get("draft_probs"),
            given["target_probs"],
            mode=kwargs.get("mode", "random"),
            generator=None,
            uniforms=kwargs["uniforms"],
            validate="full",
            capabilities=dataclasses.replace(self.capabilities, uniforms=True),
            backend_name=self.name,
            rule=kwargs.get("rule", "token"),
        )
        rest = {k: v for k, v in kwargs.items() if k not in ("uniforms", "generator")}
        dev = given["target_probs"].device
        gen = torch.Generator(device=dev).manual_seed(0)
        out = self.backend.verify(*args, generator=gen, **rest)
        out.uniforms_ignored = True  # type: ignore[attr-defined]
        return out

    def require_mode(self, mode: str) -> None:
        if mode not in self.capabilities.modes:
            raise NotClaimed(
                f"mode {mode!r} not claimed (claims {', '.join(self.capabilities.modes)})"
            )

    def require_dtype(self, dtype: str) -> None:
        if dtype not in self.capabilities.dtypes:
            raise NotClaimed(f"{dtype} not claimed (claims {', '.join(self.capabilities.dtypes)})")

    def require_rule(self, rule: str) -> None:
        rules = getattr(self.capabilities, "rules", ("token",))
        if rule not in rules:
            raise NotClaimed(f"rule {rule!r} not claimed (claims {', '.join(rules)})")

    def require_size(self, vocab: int = 0, k: int = 0) -> None:
        caps = self.capabilities
        if caps.max_vocab is not None and vocab > caps.max_vocab:
            raise NotClaimed(f"V={vocab} exceeds the claimed max_vocab={caps.max_vocab}")
        if caps.max_k is not None and k > caps.max_k:
            raise NotClaimed(f"K={k} exceeds the claimed max_k={caps.max_k}")

    def require_cuda(self, what: str) -> None:
        if self.device.type != "cuda":
            if "cuda" in self.capabilities.devices:
                raise NotClaimed(f"{what} needs a CUDA device and this run has none (runs on cpu)")
            raise NotClaimed(f"{what} needs CUDA; the backend claims {self.capabilities.devices}")


_TARGETS: dict[tuple[str, str], Target] = {}


def choose_device(capabilities: Capabilities) -> torch.device:
    """``cuda`` if claimed and present, else ``cpu`` if claimed; else ValueError."""
    import torch

    if "cuda" in capabilities.devices and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if "cpu" in capabilities.devices:
        return torch.device("cpu")
    raise ValueError(
        f"the backend claims devices {capabilities.devices} and none is usable here"
        + ("" if torch.cuda.is_available() else " (no CUDA device)")
    )


def get_target(backend_name: str, level: str) -> Target:
    """The (cached) :class:`Target` for a backend name; a new one if the registry was reset."""
    from specsample.registry import get_backend

    backend = get_backend(backend_name)
    key = (backend_name, level)
    cached = _TARGETS.get(key)
    if cached is not None and cached.backend is backend:
        return cached
    target = Target(backend_name, backend, level, choose_device(backend.capabilities))
    _TARGETS[key] = target
    return target


@dataclass
class CheckResult:
    """The outcome of one check on one backend (see the JSON schema in docs/conformance.md)."""

    backend: str
    check: str
    outcome: str
    duration_s: float
    details: str
    exception: BaseException | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "duration_s": self.duration_s, "details": self.details}


def run_check(backend_name: str, check_name: str, level: str = "fast") -> CheckResult:
    """Run one check on one backend and classify the outcome; never raises for a backend's fault."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    start = time.perf_counter()
    exc: BaseException | None = None
    try:
        chk = get_check(check_name)
        target = get_target(backend_name, level)
        details = chk.func(target) or ""
        outcome = "pass"
    except NotClaimed as e:
        outcome, details = "not-claimed", str(e)
    except AssertionError as e:
        outcome, details = "fail", str(e) or "assertion failed"
    except Exception as e:  # the backend crashed: report it, with where
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
        outcome, details, exc = "error", f"{type(e).__name__}: {e}{where}", e
        # Drop the frames' locals (large tensors, e.g. the 20 GB of edge.huge) but keep the trace.
        traceback.clear_frames(e.__traceback__)
    try:
        _sync()
    except Exception as e:  # an asynchronous CUDA error surfaces here
        if outcome == "pass":
            outcome, details, exc = "error", f"{type(e).__name__}: {e}", e
    return CheckResult(
        backend_name, check_name, outcome, round(time.perf_counter() - start, 4), details, exc
    )


def _sync() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
