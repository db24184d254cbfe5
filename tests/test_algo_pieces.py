"""Hand-computed checks of the algorithm pieces of issue 3 (losses, entropy control, filters, buffer, stages)."""

import math
import random

import numpy as np
import pytest
import torch

from or1.algo.entropy import AdaptiveEntropyController, FixedEntropyBonus, make_entropy_bonus
from or1.algo.filters import groups_with_signal, mastered_groups, select_groups
from or1.algo.losses import aggregate_loss, kl_penalty, ppo_clip_loss
from or1.algo.minibatch import near_equal_splits, plan_mini_batches
from or1.algo.sample_buffer import SelectiveSampleBuffer
from or1.algo.stages import stage_at
from or1.batch import Group, group_rows
from or1.config import EntropyConfig
from or1.data.dataset import EpochSampler

VALUES = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # three responses of 3, 1 and 2 tokens, back to back
TOKEN_SEQUENCE = torch.tensor([0, 0, 0, 1, 2, 2])
LENGTHS = torch.tensor([3, 1, 2])


@pytest.mark.parametrize("mode,expected", [
    ("token_mean", (1 + 2 + 3 + 4 + 5 + 6) / 6),
    ("seq_mean_token_mean", (2.0 + 4.0 + 5.5) / 3),
    ("seq_mean_token_sum", (6.0 + 4.0 + 11.0) / 3),
])
def test_aggregation_modes_by_hand_and_over_micro_batches(mode, expected):
    whole = aggregate_loss(VALUES, TOKEN_SEQUENCE, LENGTHS, mode, 6, 3)
    assert whole.item() == pytest.approx(expected)
    # micro-batches of one sequence each, normalised for the whole batch
    bounds = [0, 3, 4, 6]
    parts = sum(aggregate_loss(VALUES[s:e], torch.zeros(e - s, dtype=torch.long), LENGTHS[i:i + 1], mode, 6, 3)
                for i, (s, e) in enumerate(zip(bounds, bounds[1:])))
    assert parts.item() == pytest.approx(expected)


def test_aggregation_of_empty_batch_is_zero():
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        empty = torch.zeros(0)
        assert aggregate_loss(empty, empty.long(), empty, mode, 0, 0).item() == 0.0


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
    assert c.coef_for(0.1) == 0.0  # starts at 0: no bonus yet
    assert c.observe(0.1) == pytest.approx(0.005)  # below target: +delta
    assert c.coef_for(0.1) == pytest.approx(0.005)
    assert c.coef_for(0.3) == 0.0  # above target: no bonus even with c > 0
    assert c.observe(0.1) == pytest.approx(0.010)
    assert c.observe(0.1) == pytest.approx(0.012)  # clamped at max
    assert c.observe(0.2) == pytest.approx(0.012)  # equal: unchanged
    assert c.observe(0.5) == pytest.approx(0.007)
    for _ in range(5):
        c.observe(0.5)
    assert c.coef == 0.0  # clamped at min
    state = AdaptiveEntropyController(coef=0.004).state_dict()
    restored = AdaptiveEntropyController()
    restored.load_state_dict(state)
    assert restored.coef == 0.004


def test_fixed_and_adaptive_bonus_share_one_interface():
    fixed = make_entropy_bonus(EntropyConfig(mode="fixed", fixed_coef=0.01))
    assert isinstance(fixed, FixedEntropyBonus)
    assert [fixed.coef_for(e) for e in (0.0, 0.2, 5.0)] == [0.01, 0.01, 0.01]  # whatever the entropy
    assert fixed.observe(0.0) == 0.01 and fixed.coef == 0.01
    adaptive = make_entropy_bonus(EntropyConfig(target=0.5, delta=0.1, max_coef=1.0))
    assert isinstance(adaptive, AdaptiveEntropyController)
    adaptive.observe(0.1)
    assert adaptive.coef_for(0.1) == pytest.approx(0.1) and adaptive.coef_for(0.6) == 0.0


def test_filters_by_hand():
    # advantages, not rewards, decide: [1, 0, 0, 0] with its three zeros truncated under the
    # "before" mask has all-zero advantages and no signal
    advantages = torch.tensor([[0.5, -0.5], [0.0, 0.0], [0.0, 1e-3], [-0.0, 0.0]])
    assert groups_with_signal(advantages).tolist() == [True, False, True, False]
    assert select_groups(advantages, room=10) == [0, 2]
    assert select_groups(advantages, room=1) == [0]  # at most what the step still needs
    assert select_groups(advantages, room=0) == []
    assert select_groups(advantages, room=3, drop_zero_advantage=False) == [0, 1, 2]
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


def group(prompt, advantages):
    return Group(prompt, [prompt], [[2], [3]], torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]),
                 torch.zeros(2, dtype=torch.bool), rollout_log_probs=[[-0.5], [-0.7]],
                 advantages=torch.tensor(advantages))


def test_sample_buffer_keeps_only_informative_recent_groups():
    buf = SelectiveSampleBuffer(capacity_groups=2)
    buf.add(group(1, [0.0, 0.0]))  # no signal: not kept
    assert len(buf) == 0
    for i in range(3):
        buf.add(group(i, [1.0, -1.0]))
    assert [g.prompt_ids for g in buf.groups] == [[1], [2]]  # oldest left
    assert all(g.replayed and g.rollout_log_probs is None for g in buf.groups)
    assert len(buf.sample(5, random.Random(0))) == 2
    clone = SelectiveSampleBuffer(2)
    clone.load_state_dict(buf.state_dict())
    assert [g.prompt_ids for g in clone.groups] == [[1], [2]]
    assert [g.advantages.tolist() for g in clone.groups] == [[1.0, -1.0]] * 2
    assert clone.groups[0].correct.tolist() == [1.0, 0.0]
    smaller = SelectiveSampleBuffer(1)  # the configured capacity wins: the newest group stays
    smaller.load_state_dict(buf.state_dict())
    assert [g.prompt_ids for g in smaller.groups] == [[2]]
    # a buffer written before 2026-11-24 (advantages only) still loads
    old = {"capacity": 4, "groups": [{"prompt_ids": [7], "responses": [[1], [2]], "advantages": [0.5, -0.5]}]}
    clone.load_state_dict(old)
    assert clone.groups[0].advantages.tolist() == [0.5, -0.5] and clone.groups[0].rewards.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("groups, mini_batch_groups, sizes", [
    (129, 128, [65, 64]),  # not 128 + 1: the tail step would move the weights as far on one group
    (256, 128, [128, 128]),
    (10, 0, [10]),  # 0: the whole batch
    (10, 20, [10]),
    (10, 3, [3, 3, 2, 2]),
    (1, 1, [1]),
])
def test_mini_batch_plan_is_near_equal(groups, mini_batch_groups, sizes):
    plan = plan_mini_batches(groups, mini_batch_groups, 1, np.random.default_rng(0))
    assert [len(mb) for mb in plan] == sizes
    assert sorted(g for mb in plan for g in mb) == list(range(groups))  # each group once, none split
    assert near_equal_splits(7, 3) == [3, 2, 2]


def test_mini_batch_plan_epochs_and_order():
    assert plan_mini_batches(4, 0, 1) == [[0, 1, 2, 3]]  # one step: the groups keep their order
    assert plan_mini_batches(0, 4, 2) == []
    plan = plan_mini_batches(5, 2, 2, np.random.default_rng(1))
    assert [len(mb) for mb in plan] == [2, 2, 1, 2, 2, 1]  # ceil(5 / 2) = 3 steps an epoch
    for epoch in (plan[:3], plan[3:]):
        assert sorted(g for mb in epoch for g in mb) == list(range(5))
    assert plan[:3] != plan[3:]  # each epoch reshuffles
    assert plan_mini_batches(5, 2, 2, np.random.default_rng(1)) == plan  # seeded: reproducible
    with pytest.raises(ValueError, match="rng"):
        plan_mini_batches(5, 2, 1)


def test_group_rows_keep_groups_of_different_sizes_whole():
    # groups of 4, 2 (a buffered group from a stage with another rollout.n) and 3 rows
    assert group_rows([4, 2, 3], [2, 0]) == [6, 7, 8, 0, 1, 2, 3]
    assert group_rows([4, 2, 3], [1]) == [4, 5]
    assert sorted(group_rows([4, 2, 3], [0, 1, 2])) == list(range(9))


def test_stage_schedule():
    assert [stage_at(s, [3, 2, 0]) for s in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert stage_at(100, [5]) == 0
    with pytest.raises(ValueError):
        stage_at(0, [])


def test_prefix_refill_by_hand():
    from or1.algo.filters import PrefixRefill

    plan = PrefixRefill(target=4, informative_estimate=0.5, max_oversample=4, max_prompts=20)
    assert plan.start() == 4
    # judged 1, kept 0: short = 4 - 0 - 0.5 * 3 = 2.5 -> ceil(2.5 / 0.5) = 5 more
    assert plan.judge(False) == 5 and plan.drawn == 9
    # kept 1 of 2: 4 - 1 - 0.5 * 7 < 0; kept 2 of 3: 4 - 2 - 0.5 * 6 < 0; 2 of 4; 2 of 5: short exactly 0
    assert [plan.judge(k) for k in (True, True, False, False)] == [0, 0, 0, 0]
    assert plan.judge(False) == 1  # 2 of 6: 4 - 2 - 0.5 * 3 = 0.5 -> 1 more
    assert plan.judge(True) == 0 and not plan.complete  # 3 of 7
    assert plan.judge(True) == 0 and plan.complete  # 4 kept: full, 2 of 10 drawn never judged
    assert (plan.drawn, plan.judged, plan.refills, plan.refill_prompts, plan.refill_deficit) == (10, 8, 2, 6, 3.0)


def test_prefix_refill_stops_at_its_prompt_budget():
    from or1.algo.filters import PrefixRefill

    plan = PrefixRefill(target=4, informative_estimate=0.5, max_oversample=4, max_prompts=5)
    assert plan.start() == 4 and plan.judge(False) == 1  # 5 wanted, 1 left in the budget
    assert [plan.judge(False) for _ in range(3)] == [0, 0, 0] and not plan.complete
    assert plan.judge(False) == 0 and plan.complete and plan.kept == 0  # every drawn group judged
    # p below 1 / max_oversample is clamped: at most 2x the shortfall
    assert PrefixRefill(2, 0.01, 2, 100).p == 0.5
