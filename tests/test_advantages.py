import math

import pytest
import torch

from or1.algo.advantages import group_advantages


def test_hand_computed_group():
    # rewards 1, 0, 0, 1: mean 0.5, Bessel std sqrt(1/3) = 0.57735
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=0.0)
    s = math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([[0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]]), atol=1e-6)


def test_groups_are_independent_and_eps_applies():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    adv = group_advantages(rewards, eps=1e-6)
    # each group: centred +-0.5 or +-1, std sqrt(0.5) or sqrt(2)
    expected = torch.tensor([[0.5 / (math.sqrt(0.5) + 1e-6), -0.5 / (math.sqrt(0.5) + 1e-6)],
                             [1.0 / (math.sqrt(2.0) + 1e-6), -1.0 / (math.sqrt(2.0) + 1e-6)]])
    assert torch.allclose(adv, expected, atol=1e-6)


def test_all_equal_rewards_give_exact_zero():
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(adv, torch.zeros(2, 3))


def test_no_std_normalisation_is_plain_centring():
    adv = group_advantages(torch.tensor([[2.0, 0.0, 1.0]]), norm_by_std=False)
    assert torch.allclose(adv, torch.tensor([[1.0, -1.0, 0.0]]))


def test_single_response_groups_have_zero_advantage_not_nan():
    adv = group_advantages(torch.tensor([[1.0], [0.0]]))
    assert torch.equal(adv, torch.zeros(2, 1))


def test_rejects_flat_input():
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 0.0]))


def test_leave_one_out_baseline_by_hand():
    # r = 1, 0, 0 ; baselines: (0+0)/2 = 0, (1+0)/2 = .5, .5 -> centred 1, -.5, -.5 ; std (Bessel) of r = 0.57735
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0]]), eps=0.0, baseline="leave_one_out")
    s = math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([[1.0 / s, -0.5 / s, -0.5 / s]]), atol=1e-6)
    plain = group_advantages(torch.tensor([[1.0, 0.0, 0.0]]), norm_by_std=False, baseline="leave_one_out")
    assert torch.allclose(plain, torch.tensor([[1.0, -0.5, -0.5]]))


def test_truncation_masks_by_hand():
    from or1.algo.advantages import apply_truncation_mask

    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    truncated = torch.tensor([[False, False, True, True]])
    off = apply_truncation_mask(rewards, truncated, "none", eps=0.0, norm_by_std=False)
    assert torch.allclose(off, torch.tensor([[0.75, -0.25, -0.25, -0.25]]))
    after = apply_truncation_mask(rewards, truncated, "after", eps=0.0, norm_by_std=False)
    assert torch.allclose(after, torch.tensor([[0.75, -0.25, 0.0, 0.0]]))
    # before: statistics over the two complete responses only (mean 0.5)
    before = apply_truncation_mask(rewards, truncated, "before", eps=0.0, norm_by_std=False)
    assert torch.allclose(before, torch.tensor([[0.5, -0.5, 0.0, 0.0]]))
    # with std: complete responses 1, 0 -> std sqrt(0.5)
    before_std = apply_truncation_mask(rewards, truncated, "before", eps=0.0)
    assert torch.allclose(before_std, torch.tensor([[0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5), 0.0, 0.0]]))


def test_truncation_before_with_one_complete_response_gives_zero():
    from or1.algo.advantages import apply_truncation_mask

    adv = apply_truncation_mask(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[False, True, True]]), "before")
    assert torch.equal(adv, torch.zeros(1, 3))


def test_unknown_modes_are_rejected():
    from or1.algo.advantages import apply_truncation_mask

    with pytest.raises(ValueError):
        group_advantages(torch.ones(1, 2), baseline="median")
    with pytest.raises(ValueError):
        apply_truncation_mask(torch.ones(1, 2), torch.zeros(1, 2), "sometimes")
