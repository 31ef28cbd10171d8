"""``verify(..., rule=)``: validation on the host, the claimed rules, and the block reference's
status semantics (docs/rules.md, "Status")."""

from __future__ import annotations

import pytest
import torch
from specsample import Status, reference_verify
from specsample.contract import RULES, Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.reference_block import reference_verify_block


class _TokenOnly(Backend):
    name = "token-only"
    capabilities = Capabilities(devices=("cpu",), status_flags=True)

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        return reference_verify(
            inputs.draft_token_ids,
            inputs.draft_probs,
            inputs.target_probs,
            mode=inputs.mode,
            uniforms=inputs.uniforms,
            generator=inputs.generator,
            rule=inputs.rule,
        )


class _Both(_TokenOnly):
    name = "both-rules"
    capabilities = Capabilities(devices=("cpu",), status_flags=True, rules=("token", "block"))


def _inputs(B=3, K=3, V=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, K), generator=gen)
    p = torch.rand((B, K, V), generator=gen) + 0.05
    q = torch.rand((B, K + 1, V), generator=gen) + 0.05
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    u = torch.rand((B, K + 1), generator=gen)
    return ids, p, q, u


def test_default_rule_is_token_and_claims_default_to_token():
    assert RULES == ("token", "block")
    assert Capabilities().rules == ("token",)
    assert Capabilities().to_dict()["rules"] == ["token"]


@pytest.mark.parametrize("bad", ["tokens", "Block", "", 1])
def test_unknown_rule_is_rejected_listing_the_rules(bad):
    ids, p, q, u = _inputs()
    with pytest.raises(ValueError, match=r"rule must be one of \('token', 'block'\)"):
        _Both().verify(ids, p, q, uniforms=u, rule=bad)
    with pytest.raises(ValueError, match="rule must be one of"):
        reference_verify(ids, p, q, uniforms=u, rule=bad)


def test_an_unclaimed_rule_names_the_backend_and_its_rules():
    ids, p, q, u = _inputs()
    with pytest.raises(
        ValueError,
        match=r"backend 'token-only' does not support rule='block' "
        r"\(claims rules \('token',\)\)",
    ):
        _TokenOnly().verify(ids, p, q, uniforms=u, rule="block")
    assert _TokenOnly().verify(ids, p, q, uniforms=u).status.eq(0).all()


def test_the_rule_reaches_the_backend():
    ids, p, q, u = _inputs(B=64, K=4, V=3, seed=3)
    block = _Both().verify(ids, p, q, uniforms=u, rule="block")
    ref = reference_verify_block(ids, p, q, uniforms=u)
    assert torch.equal(block.token_ids, ref.token_ids)
    token = _Both().verify(ids, p, q, uniforms=u)
    assert not torch.equal(block.num_emitted, token.num_emitted)  # the rules differ here


def test_greedy_rules_coincide():
    ids, p, q, _ = _inputs(B=16, K=3, V=4, seed=1)
    ids[:8] = q[:8, :3].argmax(-1)  # some long accepted prefixes
    q[5, 1, 2] = float("nan")
    a = reference_verify(ids, p, q, mode="greedy", rule="block")
    b = reference_verify(ids, p, q, mode="greedy")
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.status, b.status)


def _one(ids, p, q, u, rule):
    out = reference_verify(ids, p, q, uniforms=u, rule=rule)
    return int(out.status[0]), out.token_ids[0].tolist(), int(out.num_emitted[0])


def _case():
    ids = torch.tensor([[0, 0]])
    p = torch.tensor([[[2 / 3, 1 / 3]] * 2])
    q = torch.tensor([[[1 / 3, 2 / 3]] * 3])
    u = torch.tensor([[0.1, 0.1, 0.5]])  # both rules accept both drafts
    return ids, p, q, u


def test_block_reads_every_drafted_row_in_full():
    ids, p, q, u = _case()
    assert _one(ids, p, q, u, "block") == (0, [0, 0, 1], 3)
    for row in (0, 1):
        qq = q.clone()
        qq[0, row, 1] = float("nan")  # away from the drafted token 0
        assert _one(ids, p, qq, u, "token")[0] == 0  # token-wise never reads it
        assert _one(ids, p, qq, u, "block") == (int(Status.BAD_TARGET_VALUE), [-1] * 3, 0)
        pp = p.clone()
        pp[0, row, 1] = -1.0
        assert _one(ids, pp, q, u, "token")[0] == 0
        assert _one(ids, pp, q, u, "block")[0] == int(Status.BAD_DRAFT_VALUE)
        qq[0, 1 - row, 1] = float("inf")
        pp[0, 1 - row, 1] = float("nan")
        assert _one(ids, pp, qq, u, "block")[0] == int(
            Status.BAD_TARGET_VALUE | Status.BAD_DRAFT_VALUE
        )


def test_block_step_one_matches_the_token_rule():
    ids, p, q, u = _case()
    for mutate, bits in (
        (lambda i, p, q, u: i.__setitem__((0, 1), 2), Status.BAD_DRAFT_ID),
        (lambda i, p, q, u: q.__setitem__((0, 0, 0), float("nan")), Status.BAD_TARGET_VALUE),
        (lambda i, p, q, u: p.__setitem__((0, 1, 0), -0.5), Status.BAD_DRAFT_VALUE),
        (lambda i, p, q, u: u.__setitem__((0, 2), 1.0), Status.BAD_UNIFORM),
    ):
        i2, p2, q2, u2 = (t.clone() for t in (ids, p, q, u))
        mutate(i2, p2, q2, u2)
        assert _one(i2, p2, q2, u2, "block")[0] == int(bits)
        assert _one(i2, p2, q2, u2, "token")[0] == int(bits)


def test_block_bonus_row_is_read_only_when_every_draft_is_accepted():
    ids, p, q, u = _case()
    qq = q.clone()
    qq[0, 2, 0] = float("nan")
    assert _one(ids, p, qq, u, "block")[0] == int(Status.BAD_TARGET_VALUE)
    u_fail = torch.tensor([[0.9, 0.9, 0.5]])  # h = (0, 1/4): no coin passes, tau = 0
    assert _one(ids, p, qq, u_fail, "block")[:1] == (0,)


def test_block_zero_and_overflowing_final_rows():
    ids, p, q, u = _case()
    qq = q.clone()
    qq[0, 2] = 0.0
    assert _one(ids, p, qq, u, "block")[0] == int(Status.ZERO_ROW)
    qq[0, 2] = 3e38
    assert _one(ids, p, qq, u, "block")[0] == int(Status.ROW_SUM_OVERFLOW)


def test_full_validation_raises_under_block():
    ids, p, q, u = _case()
    q[0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="target_probs holds a NaN"):
        reference_verify_block(ids, p, q, uniforms=u, validate="full")
    out = reference_verify_block(ids, p, q, uniforms=u)
    with pytest.raises(ValueError, match="request 0: target_probs"):
        out.raise_for_status()
