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
