"""Hand-computed checks of the algorithm pieces of issue 3 (losses, entropy control, filters, buffer, stages)."""

import math
import random

import pytest
import torch

from or1.algo.entropy import AdaptiveEntropyController
from or1.algo.filters import informative_groups, mastered_groups
from or1.algo.losses import aggregate_loss, kl_penalty, ppo_clip_loss
from or1.algo.sample_buffer import BufferedGroup, SelectiveSampleBuffer
from or1.algo.stages import stage_at
from or1.data.dataset import EpochSampler

VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [5.0, 6.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode,expected", [
    ("token_mean", (1 + 2 + 3 + 4 + 5 + 6) / 6),
    ("seq_mean_token_mean", (2.0 + 4.0 + 5.5) / 3),
    ("seq_mean_token_sum", (6.0 + 4.0 + 11.0) / 3),
])
def test_aggregation_modes_by_hand_and_over_micro_batches(mode, expected):
    whole = aggregate_loss(VALUES, MASK, mode, MASK.sum(), 3)
    assert whole.item() == pytest.approx(expected)
    parts = sum(aggregate_loss(VALUES[i:i + 1], MASK[i:i + 1], mode, MASK.sum(), 3) for i in range(3))
    assert parts.item() == pytest.approx(expected)


def test_aggregation_of_empty_batch_is_zero():
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        assert aggregate_loss(torch.ones(2, 3), torch.zeros(2, 3), mode, 0, 0).item() == 0.0


def test_dual_clip_caps_negative_advantage_loss():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[5.0, 5.0, 0.5]]))
    adv = torch.tensor([[-1.0, 1.0, -1.0]])
    plain, _ = ppo_clip_loss(new, old, adv, 0.2, 0.2)
    assert torch.allclose(plain, torch.tensor([[5.0, -1.2, 0.8]]))
    dual, clipped = ppo_clip_loss(new, old, adv, 0.2, 0.2, dual_clip=3.0)
    # A<0 with ratio 5: loss 5 capped at -3*A = 3 ; A>0 untouched ; A<0 with small ratio untouched
    assert torch.allclose(dual, torch.tensor([[3.0, -1.2, 0.8]]))
    assert clipped.tolist() == [[1.0, 1.0, 1.0]]
    with pytest.raises(ValueError):
        ppo_clip_loss(new, old, adv, 0.2, 0.2, dual_clip=0.5)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(2.0)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(d)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - (-d) - 1)  # e^{-d} + d - 1
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k9")


def test_entropy_controller_follows_the_paper_rule():
    c = AdaptiveEntropyController(target=0.2, delta=0.005, min_coef=0.0, max_coef=0.012)
    assert c.bonus_coef(0.1) == 0.0  # starts at 0: no bonus yet
    assert c.update(0.1) == pytest.approx(0.005)  # below target: +delta
    assert c.bonus_coef(0.1) == pytest.approx(0.005)
    assert c.bonus_coef(0.3) == 0.0  # above target: no bonus even with c > 0
    assert c.update(0.1) == pytest.approx(0.010)
    assert c.update(0.1) == pytest.approx(0.012)  # clamped at max
    assert c.update(0.2) == pytest.approx(0.012)  # equal: unchanged
    assert c.update(0.5) == pytest.approx(0.007)
    for _ in range(5):
        c.update(0.5)
    assert c.coef == 0.0  # clamped at min
    state = AdaptiveEntropyController(coef=0.004).state_dict()
    restored = AdaptiveEntropyController()
    restored.load_state_dict(state)
    assert restored.coef == 0.004


def test_filters_by_hand():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    assert informative_groups(rewards).tolist() == [False, False, True, False]
    correct = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert mastered_groups(correct).tolist() == [True, False, False]
    assert mastered_groups(correct, 0.75).tolist() == [True, True, False]


def test_mastered_prompts_leave_from_the_next_epoch_and_state_round_trips():
    s = EpochSampler(6, seed=0)
    first = s.next_batch(4)
    s.mark_mastered([first[0], first[1]])
    rest = s.next_batch(2)  # still epoch 0: mastered ones only leave from the next epoch
    assert sorted(first + rest) == list(range(6))
    state = s.state_dict()
    epoch1 = s.next_batch(4)
    assert sorted(epoch1) == sorted(set(range(6)) - {first[0], first[1]})
    resumed = EpochSampler(6, seed=0)
    resumed.load_state_dict(state)
    assert resumed.next_batch(4) == epoch1
    everything = EpochSampler(2)
    everything.mark_mastered([0, 1])
    with pytest.raises(RuntimeError, match="mastered"):
        everything.next_batch(1)


def test_sample_buffer_keeps_only_informative_recent_groups():
    buf = SelectiveSampleBuffer(capacity=2)
    buf.add(BufferedGroup([1], [[2], [3]], [0.0, 0.0]))  # no signal: not kept
    assert len(buf) == 0
    for i in range(3):
        buf.add(BufferedGroup([i], [[2], [3]], [1.0, -1.0]))
    assert [g.prompt_ids for g in buf.groups] == [[1], [2]]  # oldest left
    assert len(buf.sample(5, random.Random(0))) == 2
    clone = SelectiveSampleBuffer(1)
    clone.load_state_dict(buf.state_dict())
    assert [g.prompt_ids for g in clone.groups] == [[1], [2]] and clone.groups.maxlen == 2


def test_stage_schedule():
    assert [stage_at(s, [3, 2, 0]) for s in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert stage_at(100, [5]) == 0
    with pytest.raises(ValueError):
        stage_at(0, [])
