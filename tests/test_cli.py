"""The Hydra entry point as a user runs it: recipes resolve, and mistakes fail fast, before anything
expensive, with one line naming the input. Every run here is hermetic: its own working directory,
and nothing in it can reach a Ray cluster (or1 starts a local one only after every check passed)."""

import os
import subprocess
import sys
import time

import pytest

ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def run_train(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "or1.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=ENV)


def test_cfg_job_resolves_an_or1_stage_recipe_on_any_machine(tmp_path):
    proc = run_train("recipe=32b_stage2", "--cfg", "job", "trainer.total_steps=1200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # stage 2's own values over stage 1's, stage 1's over the shared OR1 settings, the override over all
    for line in ("max_response_length: 24576", "'n': 32", "prompts_per_step: 160", "nnodes: 8", "gpus_per_node: 8",
                 "init_from: outputs/32b_stage1", "path: deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
                 "lr: 1.0e-06", "total_steps: 1200", "truncation_mask: none", "recipe: 32b_stage2"):
        assert line in out, line
    assert "kl:\n    enabled: false" in out


def test_dry_run_prints_the_placement_plan_without_starting_anything(tmp_path):
    proc = run_train("recipe=32b_stage2", "trainer.dry_run=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "8 node(s) x 8 GPUs = 64 GPUs" in out
    assert "learner (fsdp, 64 ranks): GPUs 0..63" in out
    assert "32 engines, tensor_parallel_size 2" in out and "engine 0 on node 0 GPUs [0, 1]" in out
    assert "32.80B parameters" in out and "learner_state 7.6" in out  # 32.8e9 x 16 B / 64 ranks
    # init holds only the rank's float32 shard (32.8e9 x 4 B / 64), not the whole model (122 GiB)
    assert "peaks per GPU (GiB): init 1.9, update 7.6, save 6.7, generation 53.7" in out


def test_unknown_recipe_and_renamed_keys_are_refused_before_hydra_starts(tmp_path):
    proc = run_train("recipe=nope", cwd=tmp_path)
    assert proc.returncode != 0 and "unknown recipe 'nope'" in proc.stderr and "tiny_cpu" in proc.stderr
    proc = run_train("actor.lr=1e-5", "trainer.batch_size=8", cwd=tmp_path)
    assert proc.returncode != 0
    assert "actor.lr: renamed to optim.lr" in proc.stderr
    assert "trainer.batch_size: renamed to trainer.prompts_per_step" in proc.stderr


def test_an_added_unknown_key_is_refused(tmp_path):
    """Hydra's own hint after a typo is to add the key with "+": that used to be accepted and ignored."""
    proc = run_train("+trainer.totl_steps=3", f"trainer.output_dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trainer.totl_steps: no such option; did you mean trainer.total_steps?" in proc.stderr
    assert not (tmp_path / "run" / "tiny_model").exists()


@pytest.mark.parametrize("override, message", [
    ("reward.fn={dir}/rewards.py:nope", "or1: reward.fn='{dir}/rewards.py:nope': '{dir}/rewards.py' has no callable "
                                        "named 'nope'"),
    ("model.path={dir}/models/tiny", "or1: model.path='{dir}/models/tiny' does not exist."),
    ("data.train_files=[{dir}/train.jsonl]", "or1: data.train_files: data file '{dir}/train.jsonl' does not exist"),
])
def test_bad_inputs_are_refused_in_seconds_before_the_tiny_model_is_built(tmp_path, override, message):
    (tmp_path / "rewards.py").write_text("def right(response, sample):\n    return 1.0\n")
    t0 = time.time()
    proc = run_train("recipe=tiny_cpu", f"trainer.output_dir={tmp_path}/run", override.format(dir=tmp_path),
                     cwd=tmp_path)
    elapsed = time.time() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message.format(dir=tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr  # one line naming the input, not a stack
    assert not (tmp_path / "run" / "tiny_model").exists()  # refused before the minutes-long bootstrap
    assert elapsed < 45


def test_the_filter_command_refuses_bad_inputs_in_seconds(tmp_path):
    """``python -m or1.data.filter`` composes the schema (or a recipe) and checks before starting anything."""
    def run_filter_cli(*args):
        return subprocess.run([sys.executable, "-m", "or1.data.filter", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=ENV)

    proc = run_filter_cli("model.path=m", "data.train_files=[t.jsonl]", "filter.k=4")
    assert proc.returncode == 2 and "filter.output_dir is not set" in proc.stderr, proc.stderr
    (tmp_path / "t.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    proc = run_filter_cli("recipe=math7b_stage1", "data.train_files=[t.jsonl]", f"filter.output_dir={tmp_path}/o",
                          "filter.low=0.9", "filter.high=0.1")
    assert proc.returncode == 2 and "0 <= low < high <= 1" in proc.stderr, proc.stderr
    proc = run_filter_cli("model.path=/no/model", "data.train_files=[t.jsonl]", f"filter.output_dir={tmp_path}/o")
    assert proc.returncode == 2 and "model.path='/no/model' does not exist" in proc.stderr, proc.stderr
