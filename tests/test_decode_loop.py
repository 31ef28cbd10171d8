"""The speculative generation loop: greedy output equals target-only greedy decoding, sampled
output is distributed as target-only sampling, and bad input gets a clear error."""

from __future__ import annotations

import pytest
import specsample
import torch
from specsample.conformance.statistics import chisquare_gof
from specsample.contract import Backend, VerifyInputs, VerifyOutput
from specsample.decode.demo import demo_pair, demo_prompts
from specsample.decode.loop import autoregressive_generate, speculative_generate
from specsample.decode.model import TinyLM, TinyLMConfig

# the conformance suite's false-alarm rate for one statistical test
ALPHA = 1e-4
CPU_BACKENDS = ["torch-loop", "torch-vectorized"]


@pytest.fixture(scope="module")
def pair():
    return demo_pair(50, "tiny", seed=3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_greedy_equals_target_greedy(pair, backend, k):
    prompts = demo_prompts(3, 5, 50, seed=k)
    plain = autoregressive_generate(pair.target, prompts, max_new_tokens=23, mode="greedy")
    spec = speculative_generate(
        pair.target,
        pair.draft,
        prompts,
        backend=specsample.get_backend(backend),
        num_draft=k,
        max_new_tokens=23,
        mode="greedy",
    )
    assert spec.tokens.shape == (3, 23)
    assert torch.equal(spec.tokens, plain.tokens)
    assert spec.backend == backend and spec.verify_calls == spec.steps
    # the demo draft is neither always right nor always wrong: the test exercises both paths
    if k > 0:
        hist = spec.accepted_histogram
        assert len(hist) == k + 1 and hist[0] > 0 and sum(hist[1:]) > 0
        assert spec.steps < 23  # speculation took fewer target forwards than tokens


def test_prompt_of_one_token_and_batch_of_one(pair):
    prompts = torch.tensor([[7]])
    plain = autoregressive_generate(pair.target, prompts, max_new_tokens=9, mode="greedy")
    spec = speculative_generate(
        pair.target,
        pair.draft,
        prompts,
        backend=specsample.get_backend("torch-vectorized"),
        num_draft=4,
        max_new_tokens=9,
        mode="greedy",
    )
    assert torch.equal(spec.tokens, plain.tokens)


def test_phases_and_counts(pair):
    spec = speculative_generate(
        pair.target,
        pair.draft,
        demo_prompts(2, 4, 50),
        backend=specsample.get_backend("torch-vectorized"),
        num_draft=3,
        max_new_tokens=12,
        generator=torch.Generator().manual_seed(0),
    )
    assert list(spec.phases) == ["draft", "target", "verify", "bookkeeping"]
    assert all(v > 0 for v in spec.phases.values())
    assert sum(spec.phases.values()) <= spec.wall_s * 1.05
    assert 0 <= spec.mean_accepted <= 3
    assert spec.to_dict()["tokens_per_step"] == pytest.approx(spec.mean_accepted + 1)


# -- sampling: the law of the first two generated tokens -----------------------------------------

V_SMALL = 6
N_SAMPLES = 3000


def _small_pair(output_vocab=None):
    cfg = TinyLMConfig(
        V_SMALL,
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_ff=32,
        branch_scale=1.0,
        logit_scale=1.5,
        embed_spread=0.0,
    )
    target = TinyLM(cfg).init_weights(torch.Generator().manual_seed(11)).eval()
    draft_cfg = TinyLMConfig(**{**cfg.to_dict(), "n_layers": 1, "output_vocab": output_vocab})
    draft = TinyLM(draft_cfg, embed=target.embed, blocks=list(target.blocks[:1]), head=target.head)
    return target, draft.eval()


def _exact_two_token_law(target, prompt):
    """P(t1, t2) under target-only sampling, [V, V] float64."""
    t = prompt.shape[1]
    ids = torch.cat([prompt.repeat(V_SMALL, 1), torch.arange(V_SMALL)[:, None]], dim=1)
    target.reset(V_SMALL, t + 2)
    logits = target.forward(ids, torch.zeros(V_SMALL, dtype=torch.int64)).double()
    first = torch.softmax(logits[0, t - 1], -1)
    second = torch.softmax(logits[:, t], -1)
    return first[:, None] * second


def _two_token_counts(target, draft, prompt, backend, seed):
    out = speculative_generate(
        target,
        draft,
        prompt.repeat(N_SAMPLES, 1),
        backend=backend,
        num_draft=1,
        max_new_tokens=2,
        mode="random",
        generator=torch.Generator().manual_seed(seed),
        timed=False,
    )
    cells = out.tokens[:, 0] * V_SMALL + out.tokens[:, 1]
    return torch.bincount(cells, minlength=V_SMALL * V_SMALL)


class _AcceptEverything(Backend):
    """A wrong verify step (keeps every draft token): the statistical test must reject it."""

    name = "accept-everything"

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        b, k = inputs.batch_size, inputs.num_draft
        bonus = torch.multinomial(inputs.target_probs[:, k].float(), 1, generator=inputs.generator)
        tokens = torch.cat([inputs.draft_token_ids.long(), bonus], dim=1)
        return VerifyOutput(tokens, torch.full((b,), k + 1, dtype=torch.int64))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sampled_tokens_follow_the_target(backend):
    """Pearson chi-square of the first two tokens' joint law (36 cells, small ones merged) at the
    false-alarm rate ALPHA = 1e-4; fixed seeds, so the outcome is the same on every run."""
    target, draft = _small_pair()
    prompt = torch.tensor([[1, 4, 2]])
    law = _exact_two_token_law(target, prompt)
    counts = _two_token_counts(target, draft, prompt, specsample.get_backend(backend), seed=5)
    test = chisquare_gof(counts, law.flatten())
    assert test.pvalue > ALPHA, test


def test_sampled_tokens_follow_the_target_with_a_reduced_draft_vocabulary():
    """The draft predicts tokens 0..3 of 6 only (probability 0 for 4 and 5): tokens the draft
    cannot propose must still come out at the target's rate, through the residual distribution.
    Same test, same false-alarm rate."""
    target, draft = _small_pair(output_vocab=4)
    prompt = torch.tensor([[1, 4, 2]])
    law = _exact_two_token_law(target, prompt)
    assert law[4:].sum() > 0.05 and law[:, 4:].sum() > 0.05  # the unreachable tokens matter
    backend = specsample.get_backend("torch-vectorized")
    counts = _two_token_counts(target, draft, prompt, backend, seed=6)
    test = chisquare_gof(counts, law.flatten())
    assert test.pvalue > ALPHA, test


def test_greedy_with_a_reduced_draft_vocabulary():
    pair = demo_pair(1024, "tiny", seed=1)
    assert pair.draft.cfg.output_vocab == 256
    prompts = demo_prompts(2, 4, 1024)
    plain = autoregressive_generate(pair.target, prompts, max_new_tokens=20, mode="greedy")
    spec = speculative_generate(
        pair.target,
        pair.draft,
        prompts,
        backend=specsample.get_backend("torch-loop"),
        num_draft=3,
        max_new_tokens=20,
        mode="greedy",
    )
    assert torch.equal(spec.tokens, plain.tokens)
    assert sum(spec.accepted_histogram[1:]) > 0


def test_sampling_test_rejects_a_wrong_verify_step():
    target, draft = _small_pair()
    prompt = torch.tensor([[1, 4, 2]])
    law = _exact_two_token_law(target, prompt)
    counts = _two_token_counts(target, draft, prompt, _AcceptEverything(), seed=5)
    assert chisquare_gof(counts, law.flatten()).pvalue < ALPHA


# -- bad input -----------------------------------------------------------------------------------


def _spec(pair, **kw):
    args = dict(backend=specsample.get_backend("torch-vectorized"), num_draft=2, max_new_tokens=4)
    args.update(kw)
    prompts = args.pop("prompts", demo_prompts(1, 3, 50))
    draft = args.pop("draft", pair.draft)
    return speculative_generate(pair.target, draft, prompts, **args)


def test_bad_input_errors(pair):
    with pytest.raises(ValueError, match="num_draft: expected an integer >= 0, got -1"):
        _spec(pair, num_draft=-1)
    other = demo_pair(51, "tiny").draft
    with pytest.raises(
        ValueError, match="draft: its vocabulary has 51 tokens but the target's has 50"
    ):
        _spec(pair, draft=other)
    with pytest.raises(ValueError, match=r"prompts: token ids must lie in \[0, 50\)"):
        _spec(pair, prompts=torch.tensor([[3, 50]]))
    with pytest.raises(ValueError, match="max_new_tokens: expected an integer >= 1"):
        _spec(pair, max_new_tokens=0)
    with pytest.raises(ValueError, match="mode: expected one of random, greedy"):
        _spec(pair, mode="beam")
    with pytest.raises(ValueError, match="prompts: expected a"):
        _spec(pair, prompts=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="prompts: expected int32 or int64"):
        _spec(pair, prompts=torch.tensor([[1.0, 2.0]]))
