import math

import pytest

import torch

from or1.algo.losses import (aggregate_loss, ppo_clip_loss, token_log_probs_and_entropy, token_mean,
                             truncated_is_weights)


def test_ppo_clip_hand_values():
    old = torch.zeros(1, 4)
    # ratios: e^0.5 (=1.6487), e^-0.5 (=0.6065), 1.1, 1.1
    new = torch.log(torch.tensor([[math.exp(0.5), math.exp(-0.5), 1.1, 1.1]]))
    adv = torch.tensor([[1.0, 1.0, -2.0, 2.0]])
    loss, clipped = ppo_clip_loss(new, old, adv, clip_low=0.2, clip_high=0.3)
    # A=1, rho=1.6487 > 1.3: max(-1.6487, -1.3) = -1.3 (clipped)
    # A=1, rho=0.6065 < 0.8: max(-0.6065, -0.8) = -0.6065 (pessimistic side keeps unclipped)
    # A=-2, rho=1.1: max(2.2, 2.2) = 2.2 ; A=2, rho=1.1: -2.2
    assert torch.allclose(loss, torch.tensor([[-1.3, -math.exp(-0.5), 2.2, -2.2]]), atol=1e-5)
    assert clipped.tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_token_mean_over_micro_batches_equals_single_batch():
    torch.manual_seed(0)
    lengths = [3, 1, 5, 0, 2, 4]  # response tokens of 6 sequences (one without any)
    values = torch.randn(sum(lengths))
    whole = token_mean(values, 15)
    assert torch.allclose(whole, values.sum() / 15)
    bounds = [0, 4, 9, 15]  # micro-batches: sequences 0-1, 2-3, 4-5
    parts = sum(token_mean(values[s:e], 15) for s, e in zip(bounds, bounds[1:]))
    assert torch.allclose(parts, whole, atol=1e-6)
    # a per-sequence mean would weigh the 1-token response like the 5-token one: not what we compute
    starts = [sum(lengths[:i]) for i in range(6)]
    per_seq = torch.stack([values[s:s + n].mean() for s, n in zip(starts, lengths) if n]).mean()
    assert not torch.allclose(per_seq, whole)


def test_token_mean_of_an_empty_batch_is_zero():
    assert token_mean(torch.zeros(0), 0).item() == 0.0


def test_log_probs_and_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])  # vocab 2
    logp, ent = token_log_probs_and_entropy(logits, torch.tensor([1, 0]))
    # p(token 1 | logits[0]) = 3/4 ; p(token 0 | logits[1]) = 3/4
    assert torch.allclose(logp, torch.tensor([math.log(0.75), math.log(0.75)]), atol=1e-6)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(ent, torch.tensor([h, h]), atol=1e-6)


def test_single_token_responses_make_token_and_sequence_means_agree():
    values = torch.tensor([2.0, -1.0, 4.0])
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        assert aggregate_loss(values, torch.arange(3), torch.ones(3), mode, 3, 3).item() == pytest.approx(5 / 3)


def test_truncated_is_weights_hand_values():
    learner = torch.tensor([-1.0, -1.0, -0.5, -3.0], requires_grad=True)
    rollout = torch.tensor([-1.0, -1.5, -2.0, -2.0])
    w = truncated_is_weights(learner, rollout, cap=2.0)
    # exp(0) = 1; exp(0.5) = 1.6487; exp(1.5) = 4.48 -> capped at 2; exp(-1) = 0.3679 (no floor)
    assert torch.allclose(w, torch.tensor([1.0, math.exp(0.5), 2.0, math.exp(-1.0)]), atol=1e-6)
    assert not w.requires_grad
