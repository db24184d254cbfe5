import math

import pytest

import torch

from or1.algo.losses import ppo_clip_loss, token_log_probs_and_entropy, token_mean
from or1.batch import build_batch, slice_batch


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
    values = torch.randn(6, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1],
                         [0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    whole = token_mean(values, mask, mask.sum())
    assert torch.allclose(whole, (values * mask).sum() / 15)
    for k in (1, 2, 3, 6):
        parts = sum(token_mean(values[i:i + k], mask[i:i + k], mask.sum()) for i in range(0, 6, k))
        assert torch.allclose(parts, whole, atol=1e-6)
    # a per-sequence mean would weigh the 1-token row like the 5-token row: not what we compute
    per_seq = torch.stack([(values[i] * mask[i]).sum() / mask[i].sum() for i in range(6) if mask[i].sum()]).mean()
    assert not torch.allclose(per_seq, whole)


def test_token_mean_of_fully_masked_batch_is_zero():
    assert token_mean(torch.randn(2, 3), torch.zeros(2, 3), 0).item() == 0.0


def test_log_probs_and_entropy_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0], [0.0, 0.0]]])  # vocab 2
    ids = torch.tensor([[0, 1, 0]])
    logp, ent = token_log_probs_and_entropy(logits, ids)
    # p(token 1 | logits[0]) = 3/4 ; p(token 0 | logits[1]) = 3/4 ; position 0 holds 0
    assert torch.allclose(logp, torch.tensor([[0.0, math.log(0.75), math.log(0.75)]]), atol=1e-6)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(ent, torch.tensor([[0.0, h, h]]), atol=1e-6)


def test_build_batch_layout_and_slice():
    b = build_batch([[5, 6], [7]], [[8, 9, 2], [2]], pad_id=0, advantages=[0.5, -0.5],
                    rollout_log_probs=[[-1.0, -2.0, -3.0], [-4.0]])
    assert b["input_ids"].tolist() == [[5, 6, 8, 9, 2], [7, 2, 0, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["rollout_log_probs"][0].tolist() == [0, 0, -1, -2, -3]
    assert b["rollout_log_probs"][1].tolist() == [0, -4, 0, 0, 0]
    s = slice_batch(b, 1, 2)
    assert s["input_ids"].tolist() == [[7, 2]] and s["advantages"].tolist() == [-0.5]


def test_single_token_responses_make_token_and_sequence_means_agree():
    from or1.algo.losses import aggregate_loss

    values = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 4.0]])
    mask = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # a one-token response after a one-token prompt
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        assert aggregate_loss(values, mask, mode, 3, 3).item() == pytest.approx(5 / 3)
