"""The Hydra entry point: recipes resolve, overrides are typed, mistakes fail fast and clearly."""

import subprocess
import sys


def run_train(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "or1.train", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cfg_job_prints_the_resolved_recipe_with_overrides():
    proc = run_train("recipe=tiny_cpu", "--cfg", "job", "trainer.total_steps=7", "trainer.output_dir=/x/y")
    assert proc.returncode == 0, proc.stderr
    assert "total_steps: 7" in proc.stdout
    assert "path: /x/y/tiny_model" in proc.stdout  # interpolation resolved against the override
    assert "recipe: tiny_cpu" in proc.stdout


def test_unknown_recipe_lists_the_known_ones():
    proc = run_train("recipe=nope")
    assert proc.returncode != 0
    assert "unknown recipe 'nope'" in proc.stderr and "tiny_cpu" in proc.stderr


def test_typo_in_override_is_rejected():
    proc = run_train("--cfg", "job", "trainer.total_stepz=3")
    assert proc.returncode != 0
    assert "total_stepz" in proc.stderr


def test_wrong_type_is_rejected():
    proc = run_train("--cfg", "job", "trainer.total_steps=many")
    assert proc.returncode != 0
    assert "total_steps" in proc.stderr


def test_bad_reward_function_fails_before_any_actor_starts(tmp_path):
    proc = run_train(f"trainer.output_dir={tmp_path}", "tiny.warmup_steps=0", "reward.fn=no.such:fn", timeout=300)
    assert proc.returncode != 0
    assert "importing reward module 'no.such' failed" in proc.stdout + proc.stderr
