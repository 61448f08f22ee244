"""GRPO pieces checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dutrain.rl.loss import group_advantages, grpo_token_loss, k3_kl, token_logprobs, token_weights


def test_group_advantages_center_and_scale():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 1.0]])
    a = group_advantages(r)
    assert np.allclose(a.mean(axis=1), 0)
    assert np.allclose(a[0], [1, -1, -1, 1], atol=1e-3)
    assert np.all(a[1] == 0)  # no signal in a group where every sample scored the same
    unscaled = group_advantages(r, scale=False)
    assert np.allclose(unscaled[2], [-0.25, -0.25, -0.25, 0.75])
    with pytest.raises(ValueError, match="prompts, group"):
        group_advantages(np.zeros(4))


@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_token_weights_normalise_the_batch(lengths):
    n, t = len(lengths), sum(lengths)
    for norm in ("grpo", "dapo"):
        w = token_weights(lengths, norm, n, t, 64)
        assert math.isclose(sum(wi * li for wi, li in zip(w, lengths)), 1.0, rel_tol=1e-9)
    w = token_weights(lengths, "dr_grpo", n, t, 64)
    assert math.isclose(sum(wi * li for wi, li in zip(w, lengths)), t / (n * 64), rel_tol=1e-9)


def test_token_weights_of_shards_add_up_to_the_whole_batch():
    lengths = [3, 7, 2, 9, 4, 4]
    whole = token_weights(lengths, "grpo", 6, sum(lengths), 16)
    shards = token_weights(lengths[:3], "grpo", 6, sum(lengths), 16) + \
        token_weights(lengths[3:], "grpo", 6, sum(lengths), 16)
    assert whole == shards
    with pytest.raises(ValueError, match="allowed: grpo, dapo, dr_grpo"):
        token_weights(lengths, "ppo", 6, 29, 16)


def test_token_logprobs_match_softmax_and_respect_banned_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    targets = torch.randint(0, 8, (2, 3))
    lp, ent = token_logprobs(logits, targets, temperature=0.7)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(lp, ref, atol=1e-6)
    lp_b, ent_b = token_logprobs(logits, targets, 1.0, banned=[8, 9, 10])
    kept = torch.log_softmax(logits[..., :8], -1).gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(lp_b, kept, atol=1e-5)
    assert torch.isfinite(ent_b).all() and (ent_b <= math.log(8) + 1e-5).all()


def test_k3_is_zero_on_equal_policies_and_positive_otherwise():
    a = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.all(k3_kl(a, a) == 0)
    assert torch.all(k3_kl(a, a + 0.3) > 0)


def _loss(logp, adv, rollout=None, **kw):
    logp = torch.tensor(logp, requires_grad=True)
    old = logp.detach().clone() if "old" not in kw else torch.tensor(kw.pop("old"))
    roll = old.clone() if rollout is None else torch.tensor(rollout)
    loss, stats = grpo_token_loss(logp, old, roll, torch.tensor(adv), clip_low=0.2,
                                  clip_high=0.28, **kw)
    loss.sum().backward()
    return loss, logp.grad, stats


def test_on_policy_gradient_is_minus_advantage():
    _, grad, stats = _loss([-1.0, -2.0], [0.5, -1.5])
    assert torch.allclose(grad, torch.tensor([-0.5, 1.5]))
    assert stats["clipped"].sum() == 0 and torch.allclose(stats["is_weight"], torch.ones(2))


def test_clipping_stops_the_gradient_outside_the_trust_region():
    # ratio e^0.5 ≈ 1.65 > 1.28 with a positive advantage: clipped, no gradient
    _, grad, stats = _loss([-0.5], [1.0], old=[-1.0])
    assert grad.item() == 0 and stats["clipped"].item() == 1
    # ratio < 1 - 0.2 with a positive advantage: the unclipped term is the min, gradient flows
    _, grad, _ = _loss([-2.0], [1.0], old=[-1.0])
    assert grad.item() < 0


def test_truncated_importance_weight_caps_the_rollout_mismatch():
    # rollout said -3, learner says -1: raw weight e^2 ≈ 7.4, capped at 2
    _, grad, stats = _loss([-1.0], [1.0], rollout=[-3.0], is_cap=2.0)
    assert torch.allclose(grad, torch.tensor([-2.0]))
    assert stats["is_truncated"].item() == 1
    _, grad, _ = _loss([-1.0], [1.0], rollout=[-3.0], importance_sampling="none")
    assert torch.allclose(grad, torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="truncated, none"):
        _loss([-1.0], [1.0], importance_sampling="full")


@settings(max_examples=30, deadline=None)
@given(kl=st.floats(0.01, 1.0))
def test_kl_term_pulls_towards_the_reference(kl):
    # zero advantage: only the KL acts; the policy is above the reference → gradient positive
    loss, grad, stats = _loss([-0.5], [0.0], logp_ref=torch.tensor([-1.0]), kl_coef=kl)
    assert grad.item() > 0 and stats["kl"].item() > 0


def test_warmup_follows_the_optimiser_step_count_across_a_resume():
    from dutrain.rl.learner import set_warmup_lr

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=1.0)
    lrs = []
    for _ in range(3):
        lrs.append(set_warmup_lr(opt, 1e-3, 4))
        (w * torch.tensor([1e-6, 1.0, 1e3])).sum().backward()
        opt.step()
        opt.zero_grad()
    resumed = torch.optim.AdamW([torch.nn.Parameter(w.detach().clone())], lr=1.0)
    resumed.load_state_dict(opt.state_dict())
    lrs += [set_warmup_lr(resumed, 1e-3, 4), set_warmup_lr(resumed, 1e-3, 4)]
    assert lrs == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3])
    assert resumed.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert set_warmup_lr(torch.optim.AdamW([w], lr=1.0), 1e-3, 0) == pytest.approx(1e-3)
