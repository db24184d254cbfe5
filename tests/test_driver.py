"""The driver's logic (or1.trainer.Trainer) with fake components: filtering, refill, masks, the
sample buffer, mini-batch plans, metrics, reward failures, stages, checkpoint state. Milliseconds
per test; what each option does is checked where it is wired (the batches the learner receives)."""

import json

import pytest
import torch

from or1.trainer import Components, RewardFailure, Trainer, sampling_seeds

from .fakes import (FILLER, RIGHT, WRONG, CharTokenizer, ExactRewards, InlineExecutor, Outcome, RecordingLearners,
                    ScriptedRollouts, by_prompt, config, dataset, make_trainer, mixed, rows_of)


def kept_prompts(learners) -> list[int]:
    return sorted({p for u in learners.updates for p, _ in rows_of(u)})


# --- defect 1: groups are selected by their advantages, after the truncation mask ---------------
def test_a_group_whose_signal_is_masked_is_dropped_and_refilled(tmp_path):
    """[1, 0, 0, 0] with the three zeros truncated: under the "before" mask its advantages are all
    zero; it must not count toward the batch, stop refill early or dilute the token mean."""
    table = {0: [Outcome(True), Outcome(False, truncated=True), Outcome(False, truncated=True),
                 Outcome(False, truncated=True)],
             1: [Outcome(True), Outcome(False), Outcome(True), Outcome(False)]}
    cfg = config(tmp_path, **{"algorithm.truncation_mask": "before", "algorithm.filter.refill": True})
    trainer = make_trainer(cfg, by_prompt(table, default=mixed))
    trainer.sampler.next_batch = lambda k, it=iter([[0, 1], [2], [3]]): next(it)  # prompts 0, 1, then 2
    m = trainer.train_step()
    assert kept_prompts(trainer.learners) == [1, 2]  # prompt 0 dropped, prompt 2 refilled in its place
    assert m["filter/groups_kept"] == 2 and m["filter/refill_rounds"] == 1 and m["filter/groups_generated"] == 3
    assert m["filter/informative_frac"] == pytest.approx(2 / 3)
    assert m["train/groups"] == 2 and m["train/sequences"] == 8


def test_truncated_rows_reach_the_learner_with_advantage_zero_under_the_after_mask(tmp_path):
    table = {0: [Outcome(True), Outcome(False, truncated=True), Outcome(False), Outcome(False, truncated=True)]}
    trainer = make_trainer(config(tmp_path, **{"algorithm.truncation_mask": "after",
                                               "trainer.prompts_per_step": 1}), by_prompt(table))
    trainer.sampler.next_batch = lambda k: [0]
    trainer.train_step()
    (update,) = trainer.learners.updates
    adv = update["advantages"]
    # statistics over all four (mean 0.25, std 0.5), then the truncated ones zeroed
    assert adv.tolist() == pytest.approx([1.5, 0.0, -0.5, 0.0], abs=1e-5)


def test_without_the_mask_truncated_rows_carry_their_negative_advantage(tmp_path):
    table = {0: [Outcome(True), Outcome(False, truncated=True), Outcome(False), Outcome(False, truncated=True)]}
    trainer = make_trainer(config(tmp_path, **{"trainer.prompts_per_step": 1}), by_prompt(table))
    trainer.sampler.next_batch = lambda k: [0]
    m = trainer.train_step()
    assert trainer.learners.updates[0]["advantages"].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    assert m["response/truncated_frac"] == 0.5 and m["train/truncated_frac"] == 0.5


def test_with_the_filter_off_every_group_is_trained(tmp_path):
    cfg = config(tmp_path, **{"algorithm.filter.drop_zero_advantage": False, "trainer.prompts_per_step": 3})
    trainer = make_trainer(cfg, by_prompt({1: [Outcome(True)] * 4}, default=mixed))
    trainer.sampler.next_batch = lambda k: [0, 1, 2]
    m = trainer.train_step()
    assert kept_prompts(trainer.learners) == [0, 1, 2] and m["filter/groups_dropped"] == 0


def test_a_step_with_no_signal_skips_the_update_and_the_push(tmp_path):
    trainer = make_trainer(config(tmp_path, **{"trainer.total_steps": 2}), lambda i, n: [Outcome(False)] * n)
    trainer.fit()
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["actor/skipped_update"] for s in steps] == [1.0, 1.0]
    assert all(s["filter/groups_kept"] == 0 and s["train/groups"] == 0 and "actor/pg_loss" not in s for s in steps)
    assert trainer.learners.updates == [] and trainer.learners.pushes == 0


# --- defect 2: near-equal mini-batches; groups never split or dropped -------------------------
def test_129_groups_in_mini_batches_of_128_make_two_near_equal_steps(tmp_path):
    cfg = config(tmp_path, **{"trainer.prompts_per_step": 129, "algorithm.mini_batch_groups": 128, "rollout.n": 2})
    trainer = make_trainer(cfg, mixed, num_prompts=200)
    m = trainer.train_step()
    assert [u["num_sequences"] for u in trainer.learners.updates] == [130, 128]  # 65 + 64 groups of 2
    assert m["actor/num_updates"] == 2
    sampled = trainer.rollouts.calls[0]["prompts"]
    assert sorted(p for u in trainer.learners.updates for p, _ in rows_of(u)) == sorted(sampled * 2)  # every row once


def test_replayed_groups_of_another_size_are_never_split_or_dropped(tmp_path):
    """Buffered groups of 4 (generated before rollout.n became 2) mixed with fresh groups of 2."""
    cfg = config(tmp_path, **{"algorithm.sample_buffer.enabled": True, "algorithm.sample_buffer.mix_ratio": 1.0,
                              "algorithm.sample_buffer.min_informative_frac": 1.1, "trainer.prompts_per_step": 3,
                              "algorithm.mini_batch_groups": 2, "algorithm.ppo_epochs": 2})
    trainer = make_trainer(cfg, mixed)
    trainer.train_step()  # n = 4: three groups of 4 go into the buffer
    trainer.step += 1
    trainer.learners.updates.clear()
    trainer.cfg.rollout.n = 2
    m = trainer.train_step()
    assert m["buffer/replayed_groups"] == 3 and m["train/groups"] == 6 and m["train/sequences"] == 3 * 2 + 3 * 4
    assert m["actor/num_updates"] == 2 * 3  # 6 groups in steps of at most 2, twice
    for epoch in (trainer.learners.updates[:3], trainer.learners.updates[3:]):
        rows = [row for u in epoch for row in rows_of(u)]
        assert len(rows) == 18  # every row of every group, once an epoch
        for u in epoch:  # each group's rows all in one step
            prompts = [p for p, _ in rows_of(u)]
            for p in set(prompts):
                assert prompts.count(p) in (2, 4, 6)  # a fresh group (2), a replayed one (4), or both of prompt p


def test_replayed_groups_keep_their_stored_advantages(tmp_path):
    cfg = config(tmp_path, **{"algorithm.sample_buffer.enabled": True, "algorithm.sample_buffer.mix_ratio": 0.5,
                              "algorithm.sample_buffer.min_informative_frac": 0.5})
    trainer = make_trainer(cfg, by_prompt({0: [Outcome(True), Outcome(False), Outcome(False), Outcome(False)]}))
    trainer.sampler.next_batch = lambda k, it=iter([[0, 1], [2, 3]]): next(it)
    first = trainer.train_step()  # informative fraction 1/2: not starved, prompt 0 goes into the buffer
    trainer.step += 1
    second = trainer.train_step()  # nothing informative: replay one group (0.5 x 2 prompts)
    assert first["buffer/replayed_groups"] == 0 and second["buffer/replayed_groups"] == 1
    stored = trainer.learners.updates[0]["advantages"]
    assert torch.equal(trainer.learners.updates[1]["advantages"], stored)  # the advantages from step 1
    assert second["rollout/logprob_abs_diff"] == 0.0 and second["train/groups"] == 1


def test_refill_asks_for_the_deficit_over_the_informative_fraction(tmp_path):
    """Even prompts are informative, odd ones all wrong. Round 0 keeps 2 of 4; the estimate becomes
    0.7 * 1 + 0.3 * 0.5 = 0.85, so the refill round asks for ceil(2 / 0.85) = 3 prompts and fills the
    batch at once; asking for the deficit only (max_oversample=1) takes two refill rounds."""
    informative_even = by_prompt({}, default=lambda i, n: mixed(i, n) if i % 2 == 0 else [Outcome(False)] * n)
    runs = {}
    for cap in (4.0, 1.0):
        cfg = config(tmp_path / str(cap), **{"algorithm.filter.refill": True, "trainer.prompts_per_step": 4,
                                             "data.shuffle": False, "algorithm.filter.max_oversample": cap})
        trainer = make_trainer(cfg, informative_even, num_prompts=16)
        runs[cap] = (trainer.train_step(), trainer)
    m, trainer = runs[4.0]
    assert trainer.rollouts.calls[1]["prompts"] == [4, 5, 6]
    assert m["filter/refill_rounds"] == 1 and m["filter/oversample"] == pytest.approx(1.5)
    assert kept_prompts(trainer.learners) == [0, 2, 4, 6]
    assert m["filter/informative_estimate"] == pytest.approx(0.7 * 0.85 + 0.3 * 2 / 3)
    assert trainer.state_dict()["informative_estimate"]["value"] == pytest.approx(m["filter/informative_estimate"])
    m, trainer = runs[1.0]
    assert [c["prompts"] for c in trainer.rollouts.calls[1:]] == [[4, 5], [6]]
    assert m["filter/refill_rounds"] == 2 and m["filter/oversample"] == 1.0
    assert kept_prompts(trainer.learners) == [0, 2, 4, 6]


# --- item 8: metrics over every refill round, and of what was trained --------------------------
def test_reward_metrics_cover_every_refill_round_and_train_metrics_what_was_trained(tmp_path):
    table = {0: [Outcome(False)] * 4, 1: [Outcome(False)] * 4,
             2: [Outcome(True, length=3), Outcome(False, length=5)] * 2}
    cfg = config(tmp_path, **{"algorithm.filter.refill": True, "trainer.prompts_per_step": 2})
    trainer = make_trainer(cfg, by_prompt(table, default=mixed))
    trainer.sampler.next_batch = lambda k, it=iter([[0, 1], [2, 3]]): next(it)
    m = trainer.train_step()
    # round 1: 8 wrong; round 2: prompt 2 half right, prompt 3 (mixed) half right -> 4 of 16 right
    assert m["reward/score"] == pytest.approx(4 / 16)
    assert m["acc/mean"] == pytest.approx(4 / 16) and m["reward/mean"] == pytest.approx(4 / 16)
    assert m["filter/refill_rounds"] == 1 and m["filter/groups_kept"] == 2
    # trained: prompts 2 and 3 only; lengths 3, 5, 3, 5 and 2, 3, 4, 5
    assert m["train/groups"] == 2 and m["train/sequences"] == 8
    assert m["train/tokens"] == 16 + 14 and m["train/response_length"] == pytest.approx(30 / 8)
    assert m["train/acc"] == pytest.approx(0.5) and m["response_length/mean"] == pytest.approx((8 * 2 + 30) / 16)
    assert m["actor/num_tokens"] == 30  # what the learner saw: the token mean's denominator


def test_phase_times_are_measured_for_every_phase(tmp_path):
    trainer = make_trainer(config(tmp_path), mixed, sleep_rollouts=True)
    m = trainer.train_step()
    for phase in ("generate", "reward", "old_log_prob", "update", "sync", "rollout_sleep", "step"):
        assert m[f"time/{phase}"] >= 0.0, phase
    assert m["time/step"] >= m["time/generate"] + m["time/update"]
    # colocated: vLLM sleeps before the learners work and wakes, weights first, for the push
    assert trainer.rollouts.events == ["sleep2", "wake:weights", "push", "wake:kv_cache"]


def test_engines_that_start_asleep_get_the_policy_before_the_first_generation(tmp_path):
    """Colocated on GPUs the engines fall asleep before the learners allocate (sleep level 2 drops
    their weights): the driver pushes the learners' policy into them before anything else."""
    rollouts = ScriptedRollouts(mixed)
    rollouts.sleep(2)
    parts = Components(RecordingLearners(), rollouts, ExactRewards(), CharTokenizer(), dataset(4), sleep_rollouts=True)
    trainer = Trainer(config(tmp_path), parts)
    assert rollouts.events == ["sleep2", "wake:weights", "push", "wake:kv_cache"] and not rollouts.asleep
    trainer.train_step()
    assert rollouts.calls  # generated awake, after the push


# --- item 11: a reward that always fails stops the run -----------------------------------------
def test_every_reward_failing_for_several_steps_stops_the_run(tmp_path):
    rewards = ExactRewards()
    trainer = make_trainer(config(tmp_path, **{"trainer.total_steps": 10, "reward.max_failed_steps": 3}), mixed,
                           rewards=rewards)
    rewards.fail = True
    trainer.train_step()
    trainer.train_step()
    rewards.fail = False
    trainer.train_step()  # one good step resets the count
    assert trainer.failed_reward_steps == 0
    rewards.fail = True
    with pytest.raises(RewardFailure, match=r"3 consecutive steps.*KeyError: 'answer'"):
        trainer.fit()
    assert trainer.step == 2  # fit's third step, the third failing one in a row, raised before it counted


# --- the other options, checked where they are wired -------------------------------------------
def test_stages_set_the_response_limit_per_step(tmp_path):
    cfg = config(tmp_path, **{"trainer.total_steps": 4, "rollout.max_model_len": 64,
                              "algorithm.stages": [{"steps": 2, "max_response_length": 2},
                                                   {"steps": 0, "max_response_length": 6}]})
    trainer = make_trainer(cfg, lambda i, n: [Outcome(j % 2 == 0, length=4) for j in range(n)])
    trainer.fit()
    assert [c["max_tokens"] for c in trainer.rollouts.calls] == [2, 2, 6, 6]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["response/truncated_frac"] for s in steps] == [1.0, 1.0, 0.0, 0.0]  # 4 tokens cut at 2, not at 6
    assert [s["stage"] for s in steps] == [0, 0, 1, 1]


def test_kl_loads_reference_log_probs_into_the_update(tmp_path):
    trainer = make_trainer(config(tmp_path, **{"algorithm.kl.enabled": True}), mixed)
    trainer.train_step()
    assert trainer.learners.log_prob_calls == [False, True]
    update = trainer.learners.updates[0]
    assert torch.allclose(update["ref_log_probs"], update["old_log_probs"] - 0.1)
    plain = make_trainer(config(tmp_path / "b"), mixed)
    plain.train_step()
    assert plain.learners.log_prob_calls == [False] and "ref_log_probs" not in plain.learners.updates[0]


def test_entropy_bonus_fixed_and_adaptive(tmp_path):
    fixed = make_trainer(config(tmp_path, **{"algorithm.entropy.mode": "fixed", "algorithm.entropy.fixed_coef": 0.03}),
                         mixed)
    m = fixed.train_step()
    assert fixed.learners.updates[0]["entropy_coef"] == 0.03 and m["actor/entropy_coef"] == 0.03
    # sampled log-probs are -0.5 per token: e_k = 0.5 < target 1.0, so the coefficient grows each step
    cfg = config(tmp_path / "a", **{"algorithm.entropy.target": 1.0, "algorithm.entropy.delta": 0.01,
                                    "algorithm.entropy.max_coef": 0.025, "trainer.total_steps": 4})
    adaptive = make_trainer(cfg, mixed)
    adaptive.fit()
    assert [u["entropy_coef"] for u in adaptive.learners.updates] == pytest.approx([0.0, 0.01, 0.02, 0.025])
    assert adaptive.state_dict()["entropy_controller"]["coef"] == pytest.approx(0.025)


def test_mastered_prompts_leave_the_next_epoch(tmp_path):
    cfg = config(tmp_path, **{"algorithm.filter.drop_mastered": True, "trainer.prompts_per_step": 4,
                              "data.shuffle": False})
    trainer = make_trainer(cfg, by_prompt({1: [Outcome(True)] * 4, 2: [Outcome(True)] * 4}, default=mixed),
                           num_prompts=4)
    m = trainer.train_step()
    assert m["filter/mastered_new"] == 2 and m["filter/mastered_total"] == 2
    trainer.step += 1
    trainer.train_step()
    assert trainer.rollouts.calls[1]["prompts"] == [0, 3, 0, 3]  # epoch 1 without prompts 1 and 2


def test_ppo_epochs_pass_over_the_batch_again(tmp_path):
    trainer = make_trainer(config(tmp_path, **{"algorithm.ppo_epochs": 3}), mixed)
    m = trainer.train_step()
    assert m["actor/num_updates"] == 3 and len(trainer.learners.updates) == 3
    assert all(u["num_sequences"] == 8 for u in trainer.learners.updates)


def test_validation_uses_its_own_samples_and_seeds(tmp_path):
    cfg = config(tmp_path, **{"rollout.val_n": 2, "rollout.val_temperature": 0.7, "trainer.val_before_train": True})
    trainer = make_trainer(cfg, lambda i, n: [Outcome(i == 0)] * n, val_prompts=4)
    result = trainer.fit()
    assert result["first_val"]["val/acc"] == result["last_val"]["val/acc"] == pytest.approx(0.25)
    val_calls = [c for c in trainer.rollouts.calls if c["temperature"] == 0.7]
    assert len(val_calls) == 2 and val_calls[0]["seeds"] == val_calls[1]["seeds"] and val_calls[0]["n"] == 2


def test_validation_reports_avg_and_pass_at_k_per_source_at_a_fixed_length(tmp_path):
    """Two validation sources are not pooled into one figure; every validation uses the longest
    stage's response limit, whatever the stage of the moment."""
    from tests.fakes import CharTokenizer, ExactRewards, RecordingLearners, ScriptedRollouts, dataset

    from or1.data.dataset import PromptDataset
    from or1.trainer import Components, Trainer

    cfg = config(tmp_path, **{"rollout.val_n": 4, "rollout.n": 2, "rollout.val_temperature": 1.0,
                              "trainer.val_before_train": True,
                              "trainer.total_steps": 1, "rollout.max_model_len": 64,
                              "algorithm.stages": [{"steps": 1, "max_response_length": 4},
                                                   {"steps": 1, "max_response_length": 16}]})
    val = dataset(4)
    val = PromptDataset([{**row, "data_source": "aime24" if i < 2 else "aime25"} for i, row in enumerate(val.rows)],
                        val.prompt_ids)
    # val prompt 0: 3 of 4 right, 1: none, 2 and 3: all right
    right = {0: [True, True, True, False], 1: [False] * 4, 2: [True] * 4, 3: [True] * 4}
    rollouts = ScriptedRollouts(lambda i, n: [Outcome(r) for r in right[i]] if n == 4 else mixed(i, n))
    trainer = Trainer(cfg, Components(RecordingLearners(), rollouts, ExactRewards(), CharTokenizer(), dataset(8),
                                      val))
    m = trainer.validate()
    assert m["val/aime24/avg@4"] == pytest.approx(3 / 8) and m["val/aime24/pass@4"] == 0.5
    assert m["val/aime25/avg@4"] == 1.0 and m["val/aime25/pass@4"] == 1.0
    assert m["val/avg@4"] == m["val/acc"] == pytest.approx(11 / 16) and m["val/pass@4"] == 0.75
    trainer.fit()
    val_limits = [c["max_tokens"] for c in rollouts.calls if c["n"] == 4]
    train_limits = [c["max_tokens"] for c in rollouts.calls if c["n"] != 4]
    assert val_limits == [16, 16, 16] and train_limits == [4]  # stage 0 trains at 4 tokens, validation at 16
    cfg.rollout.val_max_response_length = 8
    trainer.validate()
    assert rollouts.calls[-1]["max_tokens"] == 8


# --- checkpoint state: a resumed driver continues exactly ----------------------------------------
def test_checkpoint_and_resume_reproduce_the_uninterrupted_steps(tmp_path):
    overrides = {"trainer.total_steps": 4, "algorithm.sample_buffer.enabled": True,
                 "algorithm.sample_buffer.min_informative_frac": 0.9, "algorithm.filter.drop_mastered": True,
                 "algorithm.entropy.target": 1.0, "algorithm.entropy.delta": 0.01, "algorithm.entropy.max_coef": 1.0,
                 "algorithm.filter.refill": True, "algorithm.mini_batch_groups": 1, "trainer.prompts_per_step": 3}

    def script(i, n):  # some prompts mastered, some uninformative, the rest mixed
        return [Outcome(True)] * n if i % 5 == 0 else [Outcome(False)] * n if i % 5 == 1 else mixed(i, n)

    straight = make_trainer(config(tmp_path / "a", **overrides), script, num_prompts=10)
    straight.fit()
    first = make_trainer(config(tmp_path / "b", **{**overrides, "trainer.total_steps": 2}), script, num_prompts=10)
    first.fit()  # saves its final checkpoint at step 2
    ckpt = first.checkpoints.latest()
    assert ckpt.name == "step_00000002" and (ckpt / "learner.json").is_file() and (ckpt / "config.yaml").is_file()
    resumed = make_trainer(config(tmp_path / "b", **overrides), script, num_prompts=10, resume_from=ckpt)
    assert resumed.step == 2 and resumed.learners.loaded == [str(ckpt)] and resumed.learners.pushes == 1
    resumed.fit()

    def steps(run):
        return {r["step"]: {k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))}
                for r in map(json.loads, (tmp_path / run / "run" / "metrics.jsonl").read_text().splitlines())}

    assert steps("b") == steps("a")
    assert resumed.state_dict() == {**straight.state_dict(), "run_id": first.run_id}
    assert [u["token_ids"] for u in resumed.learners.updates] == \
        [u["token_ids"] for u in straight.learners.updates[len(first.learners.updates):]]


def test_a_resume_on_other_prompts_restarts_the_data_order(tmp_path, caplog):
    """Same number of prompts, other prompts: the saved position would point into other data."""
    from tests.fakes import CharTokenizer, ExactRewards, RecordingLearners, ScriptedRollouts, dataset

    from or1.trainer import Components, Trainer

    cfg = config(tmp_path, **{"trainer.total_steps": 2})
    first = make_trainer(cfg, mixed, num_prompts=10)
    first.fit()
    ckpt = first.checkpoints.latest()

    def resume_on(prefix):
        parts = Components(RecordingLearners(), ScriptedRollouts(mixed), ExactRewards(), CharTokenizer(),
                           dataset(10, prefix=prefix))
        return Trainer(config(tmp_path, **{"trainer.total_steps": 3}), parts, resume_from=ckpt)

    same = resume_on("p")
    assert same.sampler.position == first.sampler.position == 4 and same.step == 2
    with caplog.at_level("WARNING", logger="or1"):
        other = resume_on("q")
    assert other.sampler.position == 0 and other.sampler.epoch == 0 and other.step == 2
    assert "the training data changed" in caplog.text


def test_tokens_are_what_the_fake_says(tmp_path):
    """The fakes themselves: a right response starts with "1", fillers follow, the limit cuts."""
    trainer = make_trainer(config(tmp_path), lambda i, n: [Outcome(True, length=3)] * n)
    samples = trainer.rollouts.generate([[1000]], 2, 1.0, 1.0, 2, None)
    assert [s.token_ids for s in samples] == [[RIGHT, FILLER]] * 2 and all(s.truncated for s in samples)
    assert WRONG == ord("0")


# --- one-step off-policy: the next batch is generated while this step updates ---------------------
class ShiftedLearners(RecordingLearners):
    """A learner whose current policy differs from the one that sampled: its log-probs are vLLM's - 0.3."""

    def compute_log_probs(self, batch, reference=False):
        self.log_prob_calls.append(reference)
        return batch.rollout_log_probs.clone() - 0.3


def off_policy_trainer(tmp_path, steps: int, learners=None, **overrides):
    cfg = config(tmp_path, **{"trainer.total_steps": steps, "trainer.off_policy_steps": 1, **overrides})
    parts = Components(learners or RecordingLearners(), ScriptedRollouts(mixed), ExactRewards(), CharTokenizer(),
                       dataset(8))
    return Trainer(cfg, parts)


def test_off_policy_generates_the_next_batch_during_the_update_with_the_previous_policy(tmp_path):
    import threading

    steps = 3
    trainer = off_policy_trainer(tmp_path, steps)
    learners, rollouts = trainer.learners, trainer.rollouts
    # batch k+1's generation and update k each wait (at most 5 s) until the other has begun: both can only
    # see the other begin if they run at the same time, whatever order the threads are scheduled in
    generation_began = [threading.Event() for _ in range(steps)]
    update_began = [threading.Event() for _ in range(steps)]
    generate, update = rollouts.generate, learners.update
    seen_update, seen_generation, pushes_before = [], [], []

    def overlapping_generate(*args):
        k = len(pushes_before)
        pushes_before.append(learners.pushes)  # which policy generates: the start one, or after k pushes
        generation_began[k].set()
        if k:
            seen_update.append(update_began[k - 1].wait(timeout=5))
        return generate(*args)

    def overlapping_update(batch, coef):
        k = len(learners.updates)
        update_began[k].set()
        if k + 1 < steps:
            seen_generation.append(generation_began[k + 1].wait(timeout=5))
        return update(batch, coef)

    rollouts.generate, learners.update = overlapping_generate, overlapping_update
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert seen_update == seen_generation == [True, True]
    # step 1's batch by the start policy (no push), step 2's by it too (generated during update 1), step 3's
    # by the policy after update 1 (pushed before it started)
    assert pushes_before == [0, 0, 1] and learners.pushes == 1
    assert [r["rollout/staleness"] for r in records] == [0.0, 1.0, 1.0]
    # each batch with its own step's seeds, in step order
    assert [c["seeds"] for c in rollouts.calls] == [sampling_seeds(0, step, 2) for step in range(3)]


def test_the_ratio_divides_by_the_behaviour_policys_log_probs(tmp_path):
    """Off-policy the learners' current policy is not the one that sampled: the update's denominator
    is vLLM's log-probs (-0.5 in the fake), never the learners' recomputation (-0.8)."""
    off = off_policy_trainer(tmp_path / "off", 2, ShiftedLearners())
    off.fit()
    for u in off.learners.updates:
        assert torch.equal(u["old_log_probs"], torch.full_like(u["old_log_probs"], -0.5))
    assert off.learners.log_prob_calls == []  # nothing to recompute: every row was sampled by vLLM
    on = make_trainer(config(tmp_path / "on", **{"trainer.total_steps": 2}), mixed)
    on.learners = on.parts.learners = ShiftedLearners()
    on.fit()
    for u in on.learners.updates:  # on-policy the learners' own recomputation is the behaviour policy
        assert torch.allclose(u["old_log_probs"], torch.full_like(u["old_log_probs"], -0.8))


def test_off_policy_replayed_groups_divide_by_the_learners_log_probs(tmp_path):
    """Replayed groups carry no vLLM log-probs: their denominator is the learners' recomputation."""
    trainer = off_policy_trainer(tmp_path, 2, ShiftedLearners(), **{
        "algorithm.sample_buffer.enabled": True, "algorithm.sample_buffer.min_informative_frac": 1.1,
        "algorithm.sample_buffer.mix_ratio": 0.5, "data.shuffle": False})
    trainer.fit()
    second = trainer.learners.updates[1]
    olds = second["old_log_probs"]
    fresh_tokens = sum(len(r) for _, r in second["sequences"][:8])  # 2 fresh groups of 4 come first
    assert torch.equal(olds[:fresh_tokens], torch.full((fresh_tokens,), -0.5))
    # the fake's recomputation of a replayed row: its (zero) vLLM log-probs - 0.3
    replayed = olds[fresh_tokens:]
    assert len(replayed) > 0 and torch.allclose(replayed, torch.full_like(replayed, -0.3))


def test_off_policy_resume_trains_the_batch_that_was_in_flight(tmp_path):
    """A checkpoint holds the next step's batch, generated before it by the older policy: a run resumed
    from it trains that same batch and continues as the uninterrupted run did."""
    overrides = {"trainer.save_every": 2, "algorithm.entropy.target": 1.0, "algorithm.entropy.delta": 0.01,
                 "algorithm.entropy.max_coef": 1.0}
    straight = off_policy_trainer(tmp_path / "a", 4, **overrides)
    straight.fit()
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "step_00000002"
    assert (ckpt / "in_flight.pt").is_file()
    cfg = config(tmp_path / "b", **{"trainer.total_steps": 4, "trainer.off_policy_steps": 1, **overrides})
    resumed = Trainer(cfg, Components(RecordingLearners(), ScriptedRollouts(mixed), ExactRewards(), CharTokenizer(),
                                      dataset(8)), resume_from=ckpt)
    assert resumed.step == 2 and resumed.pending is not None and resumed.pending.step == 2
    resumed.fit()
    # steps 3 and 4: the same batches (step 3's generated before the checkpoint), the same metrics
    assert [u["token_ids"] for u in resumed.learners.updates] == [u["token_ids"] for u in straight.learners.updates[2:]]
    assert [c["seeds"] for c in resumed.rollouts.calls] == [straight.rollouts.calls[3]["seeds"]]

    def steps(run):
        # timings differ, and the resumed run pushed its policy at resume instead of at step 3
        return {r["step"]: {k: v for k, v in r.items() if not k.startswith(("time/", "perf/", "sync/"))}
                for r in map(json.loads, (tmp_path / run / "run" / "metrics.jsonl").read_text().splitlines())}

    assert {s: m for s, m in steps("b").items() if s > 2} == {s: m for s, m in steps("a").items() if s > 2}
    assert {k: v for k, v in resumed.state_dict().items() if k != "run_id"} == \
        {k: v for k, v in straight.state_dict().items() if k != "run_id"}


# --- streaming refill: prompts join the running engines as groups are judged ---------------------
def test_streaming_refill_draws_while_the_first_prompts_still_generate(tmp_path):
    """Every third prompt is all-wrong. The first judged group (prompt 0) frees its place at once: the
    refill is drawn while the other first prompts still generate, not after a whole round."""
    def script(i, n):
        return [Outcome(False)] * n if i % 3 == 0 else mixed(i, n)

    cfg = config(tmp_path, **{"trainer.prompts_per_step": 4, "algorithm.filter.refill": True,
                              "algorithm.filter.refill_mode": "streaming", "data.shuffle": False})
    trainer = make_trainer(cfg, script, num_prompts=12)
    trainer.rollouts.finish_first_added = True
    trainer.make_scorer = InlineExecutor  # each chunk is scored before the next one is fetched
    m = trainer.train_step()
    calls = trainer.rollouts.calls
    assert calls[0]["prompts"] == [0, 1, 2, 3] and calls[1]["prompts"] == [4]
    assert calls[1]["still_generating"] > 0  # drawn before the first prompts had all finished
    assert calls[1]["seeds"] == sampling_seeds(0, 0, 1, 1)  # the step's second draw: seed stream 1
    # judged in draw order: 0 (dropped), 1, 2 (kept), 3 (dropped), 4 (kept): then 4 groups kept need prompt 5
    assert kept_prompts(trainer.learners) == [1, 2, 4, 5]
    assert m["filter/groups_generated"] == 6 and m["filter/groups_kept"] == 4 and m["filter/groups_dropped"] == 2
    assert m["filter/refill_rounds"] == len(calls) - 1 and m["filter/informative_frac"] == 4 / 6


def test_streaming_refill_is_the_same_whatever_order_prompts_finish_in(tmp_path):
    def script(i, n):
        return [Outcome(True)] * n if i % 4 == 1 else [Outcome(False)] * n if i % 4 == 2 else mixed(i, n)

    runs = []
    for first_added in (False, True):
        cfg = config(tmp_path / str(first_added), **{
            "trainer.prompts_per_step": 5, "trainer.total_steps": 3, "algorithm.filter.refill": True,
            "algorithm.filter.refill_mode": "streaming", "algorithm.filter.max_refill_rounds": 2})
        trainer = make_trainer(cfg, script, num_prompts=40)
        trainer.rollouts.finish_first_added = first_added
        trainer.fit()
        records = [json.loads(line) for line in (tmp_path / str(first_added) / "run" / "metrics.jsonl").open()]
        runs.append(([u["token_ids"] for u in trainer.learners.updates],
                     [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in records],
                     trainer.state_dict()["sampler"], [c["prompts"] for c in trainer.rollouts.calls]))
    assert runs[0] == runs[1]
    # step 2 (p still 1: one new prompt per dropped group) spends its budget of (1 + 2) x 5 prompts and trains
    # on the 4 groups it kept; step 3, with p lower, oversamples and fills the batch
    assert [(r["filter/groups_kept"], r["filter/groups_generated"]) for r in runs[0][1]] == [(5, 5), (4, 15), (5, 9)]
