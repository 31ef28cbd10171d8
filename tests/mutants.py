"""Deliberately broken backends: the conformance suite must fail each one, naming what broke.

``MUTANTS`` maps a mutant's backend name to (the bug, the checks that must fail, words their
failure message must contain). :func:`register_mutants` adds them all to a fresh registry through
an in-test pluggy plugin, exactly as a third-party package would register a backend.
"""

from __future__ import annotations

import torch
from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.hookspecs import hookimpl


class _Sampler(Backend):
    """A correct, simple vectorized sampler; subclasses switch one thing off."""

    name = "mutant-none"
    capabilities = Capabilities(devices=("cpu",))
    bug = ""

    def _uniforms(self, inputs: VerifyInputs) -> torch.Tensor:
        if inputs.uniforms is not None:
            return inputs.uniforms
        return torch.rand(
            (inputs.batch_size, inputs.num_draft + 1),
            generator=inputs.generator,
            device=inputs.device,
        )

    def _accept(self, u, p_at, q_at):
        if self.bug == "accept-float32":
            return u.float() * p_at.float() < q_at.float()
        if self.bug == "accept-wrong-direction":
            return u * p_at > q_at
        if self.bug == "accept-le":
            return u * p_at <= q_at
        return u * p_at < q_at

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
        ids = inputs.draft_token_ids.to(torch.int64)
        q = inputs.target_probs
        if self.bug == "mutates-input":
            q.view(-1)[0] = q.view(-1)[0] * 0.5  # normalizes "in place", as a careless kernel might
        q = q.to(torch.float64)
        p = None if inputs.draft_probs is None else inputs.draft_probs.to(torch.float64)
        if self.bug == "flush-subnormals":  # what a kernel compiled with -ftz=true reads
            tiny = torch.finfo(torch.float32).tiny
            q = torch.where(q < tiny, 0.0, q)
            p = None if p is None else torch.where(p < tiny, 0.0, p)
        rows = torch.arange(B)
        greedy = inputs.mode == "greedy"
        if greedy:
            if self.bug == "greedy-ties-largest":
                flipped = q[:, :K].flip(-1).argmax(-1)
                accept = ids == (V - 1 - flipped)
            else:
                accept = ids == q[:, :K].argmax(-1)
            u = None
        else:
            u = self._uniforms(inputs).to(torch.float64)
            q_at = q[:, :K].gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            p_at = (
                torch.ones_like(q_at) if p is None else p.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            )
            accept = self._accept(u[:, :K], p_at, q_at)
        n_acc = accept.to(torch.int64).cumprod(-1).sum(-1)
        last_q = q[rows, n_acc]
        if greedy:
            if self.bug == "greedy-ties-largest":
                last = V - 1 - last_q.flip(-1).argmax(-1)
            else:
                last = last_q.argmax(-1)
        else:
            r = last_q.clone()
            rejected = n_acc < K
            if K > 0 and self.bug != "resample-from-q":
                k = n_acc.clamp(max=K - 1)
                if p is None:
                    p_row = torch.nn.functional.one_hot(ids[rows, k], V).to(torch.float64)
                else:
                    p_row = p[rows, k]
                res = torch.clamp(last_q - p_row, min=0.0)
                if self.bug != "no-zero-fallback":
                    empty = res.sum(-1, keepdim=True) == 0
                    res = torch.where(empty, last_q, res)
                r = torch.where(rejected.unsqueeze(1), res, last_q)
            col = torch.full((B,), K)
            if self.bug == "shared-uniform":  # the resample reuses the rejected draft's number
                col = torch.where(rejected, n_acc, col)
            uk = u[rows, col]
            cdf = torch.cumsum(r, -1)
            thr = uk * cdf[:, -1]
            if self.bug == "cdf-ge":
                last = (cdf >= thr.unsqueeze(1)).to(torch.int8).argmax(-1)
            else:
                last = (cdf > thr.unsqueeze(1)).to(torch.int8).argmax(-1)
        pos = torch.arange(K + 1)
        padded = torch.cat([ids, torch.zeros(B, 1, dtype=torch.int64)], 1)
        # The off-by-one mutant pads from num_emitted + 1: the position after the last token keeps
        # the next draft instead of -1.
        n_keep = n_acc + 2 if self.bug == "padding-off-by-one" else n_acc
        tok = torch.where(pos < n_keep.unsqueeze(1), padded, -1)
        tok[rows, n_acc] = last
        return VerifyOutput(tok.to(inputs.device), (n_acc + 1).to(inputs.device))


class _FixedSeed(_Sampler):
    def _uniforms(self, inputs: VerifyInputs) -> torch.Tensor:
        if inputs.uniforms is not None:
            return inputs.uniforms
        g = torch.Generator().manual_seed(1234)  # ignores the caller's generator entirely
        return torch.rand((inputs.batch_size, inputs.num_draft + 1), generator=g)


class _GlobalRng(_Sampler):
    def _uniforms(self, inputs: VerifyInputs) -> torch.Tensor:
        if inputs.uniforms is not None:
            return inputs.uniforms
        # Draws from an unrelated generator: the caller's generator state decides nothing.
        return torch.rand((inputs.batch_size, inputs.num_draft + 1), generator=_GlobalRng.rng)

    rng = torch.Generator().manual_seed(99)


def _make(bug: str, base: type = _Sampler) -> type[Backend]:
    return type(
        f"Mutant_{bug.replace('-', '_')}",
        (base,),
        {"name": f"mutant-{bug}", "bug": bug, "description": f"broken on purpose: {bug}"},
    )


# name -> (backend class, checks that must fail, words the first check's message must contain)
MUTANTS: dict[str, tuple[type[Backend], tuple[str, ...], tuple[str, ...]]] = {
    "mutant-resample-from-q": (
        _make("resample-from-q"),
        ("stats.residual", "stats.losslessness", "exact.random"),
        ("probability 0",),
    ),
    "mutant-shared-uniform": (
        _make("shared-uniform"),
        ("stats.independent-streams", "stats.residual"),
        ("resampled",),
    ),
    "mutant-padding-off-by-one": (
        _make("padding-off-by-one"),
        ("contract.padding", "exact.random"),
        ("padding",),
    ),
    "mutant-accept-wrong-direction": (
        _make("accept-wrong-direction"),
        ("stats.acceptance", "exact.random"),
        ("acceptance frequency",),
    ),
    "mutant-accept-le": (
        _make("accept-le"),
        ("exact.accept-decisions", "edge.zero-prob-draft"),
        ("accept decision",),
    ),
    "mutant-accept-float32": (
        _make("accept-float32"),
        ("exact.accept-decisions",),
        ("accept decision", "exactly"),
    ),
    "mutant-cdf-ge": (
        _make("cdf-ge"),
        ("exact.inverse-cdf-boundaries",),
        ("inverse CDF",),
    ),
    "mutant-no-zero-fallback": (
        _make("no-zero-fallback"),
        ("exact.inverse-cdf-boundaries",),
        ("inverse CDF",),
    ),
    "mutant-greedy-ties-largest": (
        _make("greedy-ties-largest"),
        ("greedy.ties",),
        ("greedy",),
    ),
    "mutant-flush-subnormals": (
        _make("flush-subnormals"),
        ("edge.subnormal",),
        ("subnormal rows",),
    ),
    "mutant-mutates-input": (
        _make("mutates-input"),
        ("contract.inputs-unmodified",),
        ("target_probs",),
    ),
    "mutant-fixed-seed": (
        _make("fixed-seed", _FixedSeed),
        ("repro.fresh-randomness",),
        ("seeds",),
    ),
    "mutant-ignores-generator": (
        _make("ignores-generator", _GlobalRng),
        ("repro.same-state",),
        ("same generator state",),
    ),
}
CORRECT = _make("none")


class MutantPlugin:
    """A pluggy plugin registering every mutant (and the correct control, ``mutant-none``)."""

    @staticmethod
    @hookimpl
    def register_backends(register):
        register(CORRECT)
        for cls, _, _ in MUTANTS.values():
            register(cls)


def register_mutants() -> None:
    """Reset the registry and add the mutants' plugin before it loads (the test resets it after)."""
    from specsample import registry

    registry.reset()
    registry._registry.manager.register(MutantPlugin, name="specsample-mutants")
