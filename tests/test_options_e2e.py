"""The tiny recipe on the real stack with every algorithm option switched on at least once.

Two short runs (4 steps each, a barely warmed-up model): what is checked is that each option
works through real vLLM engines and learner ranks (weights stay in sync, no step produces a NaN)
and shows its effect in the logged metrics. Set A runs two FSDP2 learner ranks and two vLLM
engines, set B two DeepSpeed ZeRO-3 ranks (with a reference model). What each option does to
the batches the learner receives is checked in milliseconds with fakes in tests/test_driver.py;
DeepSpeed against FSDP2 on the same batch in tests/test_distributed_learner.py.
"""

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

COMMON = ["recipe=tiny_cpu", "tiny.warmup_steps=60", "trainer.total_steps=4", "trainer.val_before_train=false",
          "trainer.prompts_per_step=16", "rollout.val_n=1"]


# two learner ranks and two vLLM engines on the two CPUs
TWO_BY_TWO = ["learner.num_workers=2", "learner.num_cpus=0.5", "learner.torch_threads=1",
              "rollout.num_engines=2", "rollout.num_cpus=0.5"]


def run(tmp_path, *overrides, name: str = "run"):
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "or1.train", *COMMON, f"trainer.output_dir={out}", *overrides],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        for k, v in r.items():
            assert not (isinstance(v, str) or (isinstance(v, float) and math.isnan(v))), (k, v)
    return records


def test_options_set_a(tmp_path):
    records = run(
        tmp_path,
        "algorithm.adv_baseline=leave_one_out", "algorithm.truncation_mask=after",
        "algorithm.loss_agg_mode=seq_mean_token_mean", "algorithm.dual_clip=3.0",
        "algorithm.kl.enabled=true", "algorithm.kl.estimator=k3", "algorithm.kl.coef=0.01",
        "algorithm.entropy.target=5.0", "algorithm.entropy.delta=0.001", "algorithm.entropy.max_coef=0.01",
        "algorithm.filter.refill=true", "algorithm.filter.max_refill_rounds=2",
        "algorithm.filter.refill_mode=streaming",
        "algorithm.filter.drop_mastered=true", "algorithm.filter.mastered_threshold=0.06",
        "algorithm.ppo_epochs=2", "algorithm.mini_batch_groups=4",
        "algorithm.sample_buffer.enabled=true", "algorithm.sample_buffer.min_informative_frac=1.1",
        "algorithm.sample_buffer.mix_ratio=0.25",
        "algorithm.stages=[{steps:2,max_response_length:2},{steps:0,max_response_length:8}]",
        *TWO_BY_TWO, "learner.sync_bucket_mb=0.5", "learner.logits_chunk_tokens=8", "algorithm.tis_cap=2.0",
    )
    steps = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    # stages: the 2-token limit cuts most answers (3 tokens with EOS) in stage 0, none in stage 1
    assert [r["stage/max_response_length"] for r in steps] == [2, 2, 8, 8]
    assert steps[0]["response/truncated_frac"] > 0.5 and steps[3]["response/truncated_frac"] < 0.2
    for r in steps:
        # both engines got every bucketed push: their samples' log-probs equal the learners'
        assert r["rollout/logprob_abs_diff"] < 1e-4
        assert r["actor/tis_weight"] == pytest.approx(1.0, abs=1e-4)  # float32: vLLM's log-probs are the learners'
        assert r["sync/buckets"] >= 3
        assert "actor/kl_loss" in r and r["actor/kl_loss"] >= 0
        # what was trained: the kept groups plus the replayed ones, every response of each
        assert r["train/groups"] == r["filter/groups_kept"] + r["buffer/replayed_groups"]
        assert r["train/sequences"] >= 16 * r["filter/groups_kept"]
    # the entropy (~0.5-1 nats) is below the 5.0 target: the coefficient grows by delta each step,
    # and the bonus is on from the second step
    assert [round(r["entropy/controller_coef"], 6) for r in steps] == [0.001, 0.002, 0.003, 0.004]
    assert steps[0]["actor/entropy_coef"] == 0.0 and steps[1]["actor/entropy_coef"] == pytest.approx(0.001)
    # ppo_epochs=2 over groups in near-equal mini-batches of at most 4
    for r in steps:
        if not r.get("actor/skipped_update"):
            assert r["actor/num_updates"] == 2 * math.ceil(r["train/groups"] / 4)
    state = json.loads((tmp_path / "run" / "final" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["stage"] == 1
    assert state["entropy_controller"]["coef"] == pytest.approx(0.004)
    assert len(state["sampler"]["mastered"]) == steps[-1]["filter/mastered_total"]
    assert len(state["sample_buffer"]["groups"]) == steps[-1]["buffer/size"] > 0
    # the buffer replays from the second step on (min_informative_frac > 1 forces it)
    assert steps[0]["buffer/replayed_groups"] == 0 and any(r["buffer/replayed_groups"] > 0 for r in steps[1:])
    # the barely trained model is right ~2% of the time: at threshold 0.06 one right answer in 16 masters a prompt
    assert steps[-1]["filter/mastered_total"] >= 1
    assert sum(r["filter/mastered_new"] for r in steps) == steps[-1]["filter/mastered_total"]
    # streaming refill: prompts joined the two running engines to refill the batch, at most (1 + 2) x 16 drawn
    assert any(r["filter/refill_rounds"] > 0 for r in steps)
    for r in steps:
        assert r["filter/groups_kept"] <= 16 and r["filter/groups_generated"] + r["filter/groups_discarded"] <= 3 * 16


def test_options_set_b(tmp_path):
    records = run(
        tmp_path,
        "algorithm.truncation_mask=before", "algorithm.loss_agg_mode=seq_mean_token_sum",
        "algorithm.norm_adv_by_std=false", "algorithm.entropy.mode=fixed",
        "algorithm.entropy.fixed_coef=0.01", "algorithm.filter.drop_zero_advantage=false",
        "algorithm.kl.enabled=true", "algorithm.kl.estimator=k2", "rollout.max_response_length=2",
        "learner.backend=deepspeed", "learner.num_workers=2", "learner.num_cpus=0.5", "learner.torch_threads=1",
        "trainer.log_samples=4", "trainer.loggers=[console,tensorboard]", "trainer.off_policy_steps=1",
    )
    steps = [r for r in records if "reward/mean" in r]
    # one-step off-policy: each batch after the first was generated during the previous update, by the policy
    # before it; the ratio divides by vLLM's log-probs, equal to the learners' for the policy that sampled
    # (step 1: ~0 KL between them) and one update behind from step 2 on
    assert [r["rollout/staleness"] for r in steps] == [0, 1, 1, 1]
    assert all(r["perf/overlap_frac"] > 0 for r in steps[1:])
    assert steps[0]["actor/approx_kl"] < 1e-9 < min(r["actor/approx_kl"] for r in steps[1:])
    for r in steps:
        assert r["actor/entropy_coef"] == 0.01
        assert r["filter/groups_kept"] == r["filter/groups_generated"] == 16  # nothing filtered
        assert r["response/truncated_frac"] > 0.5 and r["actor/kl_loss"] >= 0
    # samples with the verifier's own score, and TensorBoard beside metrics.jsonl
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert all(s["terms"]["score"] == s["reward"] and len(s["response"]) <= 2 for s in samples)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
