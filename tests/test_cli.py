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


def test_cfg_job_resolves_an_or1_stage_recipe_on_any_machine():
    proc = run_train("recipe=32b_stage2", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # stage 2's own values over stage 1's, stage 1's over the shared OR1 settings
    for line in ("max_response_length: 24576", "'n': 32", "batch_size: 160", "nnodes: 8", "gpus_per_node: 8",
                 "init_from: outputs/32b_stage1", "path: deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
                 "lr: 1.0e-06", "use_kl_loss: false", "recipe: 32b_stage2"):
        assert line in out, line


def test_dry_run_prints_the_placement_plan_without_starting_anything():
    proc = run_train("recipe=32b_stage2", "trainer.dry_run=true")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "8 node(s) x 8 GPUs = 64 GPUs" in out
    assert "learner (fsdp, 64 ranks): GPUs 0..63" in out
    assert "32 engines, tensor_parallel_size 2" in out and "engine 0 on node 0 GPUs [0, 1]" in out
    assert "32.80B parameters" in out and "learner_state 7.6" in out  # 32.8e9 x 16 B / 64 ranks


def test_launch_without_the_resources_fails_fast_naming_them():
    proc = run_train("recipe=7b_stage1")
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "needs 1 node(s) with 8 GPUs each" in err and "the Ray cluster has 0 GPUs" in err, err[-3000:]
    proc = run_train("recipe=32b_stage1")  # joins an existing cluster (ray_address=auto): there is none
    assert proc.returncode != 0
    assert "trainer.ray_address='auto': no running Ray cluster reachable" in proc.stdout + proc.stderr


def test_every_recipe_composes_and_plans():
    """Typed, consistent layouts; each stage starts where the previous one's output is."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from or1.config import register_configs
    from or1.placement import plan_placement
    from or1.train import RECIPES_DIR
    from or1.trainer import validate_algorithm_config

    register_configs()
    recipes = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))
    assert {"7b_stage1", "7b_stage2", "32b_stage1", "32b_stage2", "math7b_stage1", "math7b_stage2",
            "math7b_stage3", "math7b_stage3_5", "tiny_cpu"} <= set(recipes)
    typed = {}
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        for name in recipes:
            cfg = OmegaConf.to_object(compose(config_name=name, overrides=[f"recipe={name}"]))
            validate_algorithm_config(cfg)
            plan_placement(cfg)
            typed[name] = cfg
    for name, cfg in typed.items():
        if "_stage" in name and not name.endswith("stage1"):
            previous = typed[cfg.trainer.init_from.split("/")[-1]]
            assert cfg.trainer.total_steps > previous.trainer.total_steps, name
            assert cfg.rollout.max_response_length >= previous.rollout.max_response_length, name
            assert cfg.model.path == previous.model.path, name
    assert typed["math7b_stage1"].actor.mini_batch_size * 2 == typed["math7b_stage1"].trainer.batch_size
