"""status.*: bad values found where they are read, reported per request (docs/contract.md, "Status").

Each case plants one bad value (an id out of range, NaN, +inf, -inf, a negative or an all-zero row,
a row whose sum overflows float32, a uniform outside [0, 1)) into one request of an otherwise clean
batch, at a place the contract names: a drafted entry of an accepted position, the rejected
position's row, the bonus row, or a row the walk never reads. The backend's default call must give
exactly the reference's status bits, all -1 and 0 emitted on the flagged request, the reference's
tokens on every other request (coupled with explicit uniforms), leave its inputs unmodified, and
``raise_for_status()`` must raise a ``ValueError`` naming the request and the argument.
``validate="full"`` must raise before the backend runs at all.

A backend that does not claim ``status_flags`` checks values eagerly in its default call: there the
check requires that every case which the reference flags raises a ``ValueError`` naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from specsample.reference import reference_verify
from specsample.status import describe

from .check_common import assert_unmodified, compare_to_reference, snapshot, where, workload
from .checks import CheckFailed, Target, check

B, K, V = 5, 4, 37
BAD = 2  # the request that receives the bad value

NAN, INF = float("nan"), float("inf")


@dataclass
class Case:
    """One planted bad value: ``edit(ids, p, q, u)`` changes the clones in place."""

    label: str
    mode: str
    edit: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], None]
    draft: bool = True  # draft_probs given
    float32_only: bool = False  # needs the float32 (or bfloat16) range

    @property
    def arg(self) -> str:
        """The argument holding the planted value."""
        words = self.label.removeprefix("greedy: ").split(" ")
        return {"id": "draft_token_ids", "uniform": "uniforms", "p": "draft_probs"}.get(
            words[0], "target_probs"
        )

    @property
    def eager_detectable(self) -> bool:
        """An eager pass over the values finds it (not a zero or overflowing row: which row is
        sampled depends on the walk, so only the backend can tell)."""
        return "all-zero" not in self.label and "past float32" not in self.label


def _accept_all(ids, p, q, u) -> None:
    """Request BAD accepts every draft: u = 0 and q > 0 at the drafted entries."""
    u[BAD, :K] = 0.0
    for k in range(K):
        q[BAD, k, int(ids[BAD, k])] = max(float(q[BAD, k, int(ids[BAD, k])]), 0.25)


def _reject_at(k: int):
    """Request BAD accepts drafts before k and rejects at k (q(x_k) = 0)."""

    def edit(ids, p, q, u) -> None:
        _accept_all(ids, p, q, u)
        q[BAD, k, int(ids[BAD, k])] = 0.0

    return edit


def _then(*edits):
    def edit(ids, p, q, u) -> None:
        for e in edits:
            e(ids, p, q, u)

    return edit


def _other_entry(ids, k: int) -> int:
    """A vocabulary entry of row k that is not request BAD's drafted token there."""
    x = int(ids[BAD, k]) if k < K else -1
    return (x + 7) % V if x >= 0 else 3


def _random_cases() -> list[Case]:
    cases = [
        Case("id < 0", "random", lambda ids, p, q, u: ids.__setitem__((BAD, 1), -1)),
        Case("id >= V", "random", lambda ids, p, q, u: ids.__setitem__((BAD, 0), V)),
        Case(
            "id >= V, draft_probs=None",
            "random",
            lambda ids, p, q, u: ids.__setitem__((BAD, K - 1), V + 5),
            draft=False,
        ),
        Case("uniform = 1", "random", lambda ids, p, q, u: u.__setitem__((BAD, 1), 1.0)),
        Case("uniform < 0", "random", lambda ids, p, q, u: u.__setitem__((BAD, K), -0.25)),
        Case("uniform NaN", "random", lambda ids, p, q, u: u.__setitem__((BAD, 0), NAN)),
    ]
    for name, value in (("NaN", NAN), ("+inf", INF), ("-inf", -INF), ("negative", -0.5)):
        cases += [
            Case(
                f"q {name} at an accepted drafted entry",
                "random",
                _then(
                    _accept_all,
                    lambda ids, p, q, u, v=value: q.__setitem__((BAD, 1, int(ids[BAD, 1])), v),
                ),
            ),
            Case(
                f"p {name} at an accepted drafted entry",
                "random",
                _then(
                    _accept_all,
                    lambda ids, p, q, u, v=value: p.__setitem__((BAD, 0, int(ids[BAD, 0])), v),
                ),
            ),
            Case(
                f"q {name} in an accepted row, not drafted (not read)",
                "random",
                _then(
                    _reject_at(2),
                    lambda ids, p, q, u, v=value: q.__setitem__((BAD, 0, _other_entry(ids, 0)), v),
                ),
            ),
            Case(
                f"q {name} in the rejected row",
                "random",
                _then(
                    _reject_at(1),
                    lambda ids, p, q, u, v=value: q.__setitem__((BAD, 1, _other_entry(ids, 1)), v),
                ),
            ),
            Case(
                f"p {name} in the rejected row",
                "random",
                _then(
                    _reject_at(1),
                    lambda ids, p, q, u, v=value: p.__setitem__((BAD, 1, _other_entry(ids, 1)), v),
                ),
            ),
            Case(
                f"q {name} in the bonus row",
                "random",
                _then(
                    _accept_all,
                    lambda ids, p, q, u, v=value: q.__setitem__((BAD, K, _other_entry(ids, K)), v),
                ),
            ),
            Case(
                f"q {name} in the bonus row, draft_probs=None",
                "random",
                _then(_accept_all, lambda ids, p, q, u, v=value: q.__setitem__((BAD, K, 5), v)),
                draft=False,
            ),
            Case(
                f"q {name} in the bonus row, rejected earlier (not read)",
                "random",
                _then(_reject_at(0), lambda ids, p, q, u, v=value: q.__setitem__((BAD, K, 5), v)),
            ),
        ]
    cases += [
        Case(
            "all-zero bonus row",
            "random",
            _then(_accept_all, lambda ids, p, q, u: q[BAD, K].zero_()),
        ),
        Case(
            "all-zero rejected row (residual and q)",
            "random",
            _then(_reject_at(1), lambda ids, p, q, u: q[BAD, 1].zero_()),
        ),
        Case(
            "all-zero rejected row, draft_probs=None",
            "random",
            _then(_reject_at(1), lambda ids, p, q, u: q[BAD, 1].zero_()),
            draft=False,
        ),
        Case(
            "bonus row sums past float32",
            "random",
            _then(_accept_all, lambda ids, p, q, u: q[BAD, K].fill_(1e37)),
            float32_only=True,
        ),
        Case(
            "rejected row sums past float32",
            "random",
            _then(
                _reject_at(1),
                lambda ids, p, q, u: (
                    q[BAD, 1].fill_(1e37),
                    q[BAD, 1, int(ids[BAD, 1])].fill_(0.0),
                ),
            ),
            float32_only=True,
        ),
    ]
    return cases


def _greedy_accept_all(ids, p, q, u) -> None:
    """Request BAD's drafts are the argmax of their rows (a clear winner)."""
    for k in range(K):
        q[BAD, k, int(ids[BAD, k])] = 2.0


def _greedy_cases() -> list[Case]:
    cases = [
        Case("greedy: id < 0", "greedy", lambda ids, p, q, u: ids.__setitem__((BAD, 0), -3)),
        Case("greedy: id >= V", "greedy", lambda ids, p, q, u: ids.__setitem__((BAD, 2), V)),
    ]
    for name, value in (("NaN", NAN), ("+inf", INF), ("negative", -0.5)):
        cases += [
            Case(
                f"greedy: q {name} in row 0",
                "greedy",
                lambda ids, p, q, u, v=value: q.__setitem__((BAD, 0, 11), v),
            ),
            Case(
                f"greedy: q {name} in the bonus row, all accepted",
                "greedy",
                _then(
                    _greedy_accept_all, lambda ids, p, q, u, v=value: q.__setitem__((BAD, K, 4), v)
                ),
            ),
            Case(
                f"greedy: q {name} after the first mismatch (not read)",
                "greedy",
                _then(
                    lambda ids, p, q, u: q[BAD, 0].__setitem__(_other_entry(ids, 0), 5.0),
                    lambda ids, p, q, u, v=value: q.__setitem__((BAD, 2, 4), v),
                ),
            ),
        ]
    return cases


def _cases(target: Target) -> list[Case]:
    cases: list[Case] = []
    if "random" in target.capabilities.modes:
        cases += _random_cases()
    if "greedy" in target.capabilities.modes:
        cases += _greedy_cases()
    return cases


def _run_case(target: Target, case: Case, dtype_name: str, seed: int) -> tuple[int, bool]:
    """Run one case; returns (the reference's status of request BAD, whether it was flagged)."""
    dev = target.device
    w = workload(target, B, K, V, seed=seed, acceptance="high")
    ids = w.draft_token_ids.cpu().to(torch.int64).clone()
    p = None if (not case.draft or w.draft_probs is None) else w.draft_probs.cpu().float().clone()
    if p is None and case.draft:
        raise CheckFailed("workload without draft_probs")  # make_workload always draws them
    q = w.target_probs.cpu().float().clone()
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.rand(B, K + 1, generator=g)
    case.edit(ids, p if p is not None else torch.empty(0), q, u)
    dtype = w.target_probs.dtype
    ids = ids.to(dev, w.draft_token_ids.dtype)
    q = q.to(dev, dtype)
    p = None if p is None else p.to(dev, dtype)
    u = u.to(dev)
    kw = {"mode": case.mode}
    if case.mode == "random":
        kw["uniforms"] = u
    label = f"{case.label}, {dtype_name}"

    ref = reference_verify(ids, p, q, **kw)
    ref_status = ref.status.cpu()
    flagged = ref_status != 0
    if bool(flagged[[b for b in range(B) if b != BAD]].any()):
        raise CheckFailed(f"test bug {where(label)}: the reference flags a clean request")

    if not target.capabilities.status_flags:
        try:
            target.verify(ids, p, q, **kw)
        except ValueError as e:
            if case.arg not in str(e):
                raise CheckFailed(
                    f"eager check {where(label)}: raised ValueError({str(e)!r}), which does not "
                    f"name {case.arg}"
                ) from e
            return int(ref_status[BAD]), True
        raise CheckFailed(
            f"eager check {where(label)}: the backend does not claim status_flags, so its default "
            f"call must check every value eagerly and raise ValueError; it returned normally"
        )

    before = snapshot(ids, p, q, u)
    out = target.verify(ids, p, q, **kw)
    assert_unmodified(
        before,
        [ids, p, q, u],
        ["draft_token_ids", "draft_probs", "target_probs", "uniforms"],
        label,
    )
    status = getattr(out, "status", None)
    if not isinstance(status, torch.Tensor) or tuple(status.shape) != (B,):
        raise CheckFailed(
            f"status {where(label)}: VerifyOutput.status must be a [B]={B} tensor, got "
            f"{None if status is None else tuple(status.shape)}"
        )
    if status.dtype != torch.int32:
        raise CheckFailed(f"status dtype {where(label)}: {status.dtype}, expected torch.int32")
    got = status.cpu()
    if not torch.equal(got, ref_status):
        b = int(torch.nonzero(got != ref_status)[0])
        raise CheckFailed(
            f"status bits {where(label, b)}: the backend reports {int(got[b])} "
            f"({describe(int(got[b]))}), the reference {int(ref_status[b])} "
            f"({describe(int(ref_status[b]))})"
        )
    tok, num = out.token_ids.cpu(), out.num_emitted.cpu()
    for b in torch.nonzero(flagged).flatten().tolist():
        if int(num[b]) != 0 or bool((tok[b] != -1).any()):
            raise CheckFailed(
                f"flagged outputs {where(label, b)}: status {int(got[b])} but num_emitted="
                f"{int(num[b])} and token_ids={tok[b].tolist()}; a flagged request must emit "
                "nothing (all -1, num_emitted 0)"
            )
    clean = torch.nonzero(~flagged).flatten().to(dev)
    sub = type(out)(out.token_ids[clean], out.num_emitted[clean], out.status[clean])
    compare_to_reference(
        target,
        ids[clean],
        None if p is None else p[clean],
        q[clean],
        mode=case.mode,
        u=None if case.mode == "greedy" else u[clean],
        label=f"{label}, clean requests",
        out=sub,
    )
    if bool(flagged[BAD]):
        try:
            out.raise_for_status()
        except ValueError as e:
            msg = str(e)
            arg = describe(int(ref_status[BAD])).split(" ")[0]
            if f"request {BAD}" not in msg or arg not in msg:
                raise CheckFailed(
                    f"raise_for_status {where(label)}: message {msg!r} must name 'request {BAD}' "
                    f"and the argument {arg}"
                ) from e
        else:
            raise CheckFailed(
                f"raise_for_status {where(label)}: did not raise for a flagged request"
            )
    else:
        out.raise_for_status()
    return int(ref_status[BAD]), bool(flagged[BAD])


@check("status.bad-values")
def bad_values(target: Target) -> str:
    """Every planted bad value gives the reference's status bits, all -1 / 0 emitted on exactly the
    affected request, the reference's tokens elsewhere, and a raise_for_status() naming the request
    and argument (or, without status_flags, an eager ValueError naming the argument)."""
    dtype = workload(target, 1, 1, 4, seed=0).target_probs.dtype
    dtype_name = str(dtype).removeprefix("torch.")
    flagged = unflagged = skipped = 0
    bits_seen = 0
    for i, case in enumerate(_cases(target)):
        if case.float32_only and dtype == torch.float16:
            continue
        if not target.capabilities.status_flags and not case.eager_detectable:
            skipped += 1  # zero and overflowing rows: only a status-reporting backend can tell
            continue
        bits, was_flagged = _run_case(target, case, dtype_name, seed=3000 + i)
        bits_seen |= bits
        flagged += was_flagged
        unflagged += not was_flagged
    if not target.capabilities.status_flags:
        return (
            f"status_flags not claimed: {flagged} cases ({dtype_name}) raised an eager ValueError "
            f"naming the argument; {skipped} zero/overflowing-row cases need status_flags"
        )
    return (
        f"{flagged + unflagged} cases ({dtype_name}): {flagged} flagged (bits seen "
        f"{int(bits_seen)}: {describe(bits_seen)}), {unflagged} unread and verified normally"
    )


@check("status.validate-full")
def validate_full(target: Target) -> str:
    """``validate="full"`` raises ValueError naming the argument before the backend runs."""
    w = workload(target, B, K, V, seed=3100)
    mode = "random" if "random" in target.capabilities.modes else "greedy"
    calls = 0
    original = target.backend._verify

    def spy(inputs):
        nonlocal calls
        calls += 1
        return original(inputs)

    target.backend._verify = spy  # an instance attribute shadows the method for this check only
    try:
        cases = []
        ids = w.draft_token_ids.clone()
        ids[BAD, 0] = V
        cases.append(("draft_token_ids", ids, w.draft_probs, w.target_probs))
        q = w.target_probs.clone()
        q[BAD, K, 3] = NAN  # in the bonus row: far from anything the kernel would read
        cases.append(("target_probs", w.draft_token_ids, w.draft_probs, q))
        if mode == "random":
            p = w.draft_probs.clone()
            p[BAD, K - 1, 1] = -1.0
            cases.append(("draft_probs", w.draft_token_ids, p, w.target_probs))
        for arg, i, pp, qq in cases:
            try:
                target.verify(i, pp, qq, mode=mode, validate="full")
            except ValueError as e:
                if arg not in str(e) or f"request {BAD}" not in str(e):
                    raise CheckFailed(
                        f"validate='full' [{arg}]: message {str(e)!r} must name {arg} and "
                        f"request {BAD}"
                    ) from e
            else:
                raise CheckFailed(f"validate='full' [{arg}]: a bad value was accepted")
        if calls:
            raise CheckFailed(
                f"validate='full': the backend ran {calls} time(s) before the error was raised"
            )
    finally:
        del target.backend._verify
    return f"{len(cases)} bad inputs raised before the backend ran"
