"""The typed configuration: choices refused at composition, unknown and renamed keys refused,
inconsistent settings refused and suspicious ones warned about before anything starts."""

import logging
import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from or1.config import (ConfigError, EntropyMode, OR1Config, RewardRoute, TruncationMask, register_configs,
                        refuse_unknown_keys, renamed_keys_hint, validate_config)
from or1.train import RECIPES_DIR

register_configs()


def composed(*overrides, recipe="tiny_cpu"):
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        return compose(config_name=recipe, overrides=[f"recipe={recipe}", *overrides])


def typed(*overrides, recipe="tiny_cpu") -> OR1Config:
    return OmegaConf.to_object(composed(*overrides, recipe=recipe))


@pytest.mark.parametrize("override, message", [
    ("algorithm.truncation_mask=sometimes", "expected one of \\[none, before, after\\]"),
    ("trainer.loggers=[console,mlflow]", "'mlflow', expected one of \\[console, jsonl, wandb, tensorboard\\]"),
    ("learner.backend=megatron", "expected one of \\[fsdp, deepspeed\\]"),
    ("algorithm.entropy.mode=sometimes", "expected one of \\[adaptive, fixed\\]"),
    ("trainer.total_steps=many", "total_steps"),
])
def test_bad_choices_and_types_fail_at_composition(override, message):
    with pytest.raises(ConfigCompositionException) as err:
        composed(override)
    assert re.search(message, str(err.value.__cause__) + str(err.value)), err.value


def test_choices_become_enums():
    cfg = typed("algorithm.truncation_mask=before", "algorithm.entropy.mode=fixed")
    assert cfg.algorithm.truncation_mask is TruncationMask.before and cfg.algorithm.entropy.mode is EntropyMode.fixed
    assert cfg.algorithm.truncation_mask == "before"  # a Choice compares equal to its name


def test_unknown_keys_are_refused_whatever_their_prefix():
    cfg = composed("+trainer.totl_steps=3", "+algorithm.kl.coeff=1", "+trainer.batch_size=4", "+bogus=1",
                   "+learner.deepspeed_config.zero_optimization={stage: 2}")  # a free-form dict: any key is fine
    with pytest.raises(ConfigError) as err:
        refuse_unknown_keys(cfg)
    message = str(err.value)
    assert "trainer.totl_steps: no such option; did you mean trainer.total_steps?" in message
    assert "algorithm.kl.coeff: no such option; did you mean algorithm.kl.coef?" in message
    assert "trainer.batch_size: renamed to trainer.prompts_per_step" in message
    assert "bogus: no such option" in message and "deepspeed_config" not in message
    refuse_unknown_keys(composed())  # the recipe itself is clean


def test_renamed_keys_on_the_command_line_name_their_new_home():
    hint = renamed_keys_hint(["actor.lr=1e-5", "trainer.total_steps=3", "+algorithm.use_kl_loss=true"])
    assert hint == ("renamed configuration keys:\n  actor.lr: renamed to optim.lr\n"
                    "  algorithm.use_kl_loss: renamed to algorithm.kl.enabled")
    assert renamed_keys_hint(["trainer.total_steps=3"]) is None


def test_reward_routes_are_typed_in_every_or1_recipe():
    """They reached the reward manager as plain dicts (AttributeError: 'dict' object has no attribute 'fn')."""
    cfg = typed(recipe="7b_stage1")
    code = cfg.reward.routes["code"]
    assert isinstance(code, RewardRoute) and code.fn == "or1.rewards.code:score"
    cfg = typed("+reward.routes={mine: {terms: [{fn: a.b:c, weight: 0.5}]}}")
    assert cfg.reward.routes["mine"].terms[0].weight == 0.5


@pytest.mark.parametrize("overrides, message", [
    (["learner.compute_dtype=float16"], "half precision needs loss scaling"),
    (["model.dtype=float16"], "model.dtype=float16 is not supported"),
    (["algorithm.entropy.min_coef=0.2", "algorithm.entropy.max_coef=0.1"], "min_coef=0.2 is above"),
    (["algorithm.dual_clip=0.5"], "algorithm.dual_clip must be > 1"),
    (["algorithm.mini_batch_groups=-1"], "mini_batch_groups must be >= 0"),
    (["rollout.max_model_len=10"], "cannot hold data.max_prompt_length"),
    (["rollout.sleep_level=3"], "rollout.sleep_level must be 1 or 2"),
    (["learner.sync_bucket_mb=0"], "learner.sync_bucket_mb must be > 0"),
    (["+reward.routes={code: {}}"], "reward.routes.code names no reward"),
    (["reward.max_failed_steps=0"], "reward.max_failed_steps must be >= 1"),
    (["trainer.off_policy_steps=2"], "trainer.off_policy_steps must be 0"),
    (["trainer.off_policy_steps=1", "trainer.gpus_per_node=8"], "set trainer.placement=split"),
    (["trainer.off_policy_steps=1", "algorithm.tis_cap=2"], "set one of them only"),
    (["algorithm.tis_cap=0"], "algorithm.tis_cap must be > 0"),
    (["algorithm.filter.refill_mode=streaming"], "set algorithm.filter.refill=true"),
])
def test_inconsistent_settings_are_refused_naming_the_fields(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(typed(*overrides))


@pytest.mark.parametrize("overrides, message", [
    (["rollout.val_n=4", "rollout.val_temperature=0"], "greedy decoding gives the same answer 4 times"),
    (["model.dtype=bfloat16"], "updates smaller than ~1/256 of a weight"),
    (["rollout.n=1"], "nothing will be learned"),
])
def test_suspicious_settings_are_warned_about(overrides, message, caplog):
    with caplog.at_level(logging.WARNING, logger="or1"):
        warnings = validate_config(typed(*overrides))
    assert any(message in w for w in warnings) and message in caplog.text
    assert validate_config(typed()) == []  # the tiny recipe itself is clean
