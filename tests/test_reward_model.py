"""Reward-model rewards with a tiny random sequence-classification model the test builds."""

import pytest

from or1.config import RewardConfig, RewardModelConfig, RewardTerm
from or1.rewards.loader import RewardConfigError
from or1.rewards.manager import RewardManager
from or1.rewards.reward_model import RewardModelWorker
from or1.tiny import TinySpec, create_tiny_reward_model


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    return create_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm", TinySpec(hidden_size=128, seed=3))


def test_scores_are_per_pair_and_independent_of_batching(tiny_rm):
    worker = RewardModelWorker(str(tiny_rm), batch_size=3)
    prompts = ["1+1", "2+2", "what is 3+3?", "1+1"]
    responses = ["2", "a much longer answer: 4", "6", "3"]
    batched = worker.score(prompts, responses)
    alone = [worker.score([p], [r])[0] for p, r in zip(prompts, responses)]
    assert batched == pytest.approx(alone, abs=1e-4)  # padding does not leak into scores
    assert len(set(round(x, 4) for x in batched)) == 4  # a real model: different pairs, different scores
    assert worker.render("1+1", "2") == "1+12"  # the model's own chat template (the tiny one concatenates)


@pytest.mark.slow
def test_reward_model_term_combined_with_verifier(tiny_rm, ray_local):
    cfg = RewardConfig(
        terms=[RewardTerm(fn="or1.rewards.math:score", name="correct"), RewardTerm(fn="rm:tiny", weight=0.5)],
        reward_models={"tiny": RewardModelConfig(path=str(tiny_rm), dtype="float32")}, num_workers=1)
    manager = RewardManager(cfg)
    manager.start_reward_models()
    try:
        rows = [{"prompt": "1+1", "answer": "2"}, {"prompt": "1+1", "answer": "2"}]
        out = manager.score(["2", "3"], rows)
    finally:
        manager.close()
    rm = RewardModelWorker(str(tiny_rm)).score(["1+1", "1+1"], ["2", "3"])
    assert out.rewards.tolist() == pytest.approx([1.0 + 0.5 * rm[0], 0.5 * rm[1]], abs=1e-4)
    assert out.correct.tolist() == [1.0, 0.0]
    assert out.metrics()["reward/tiny"] == pytest.approx(sum(rm) / 2, abs=1e-4)


def test_unknown_reward_model_is_a_config_error():
    with pytest.raises(RewardConfigError, match="names no model"):
        RewardManager(RewardConfig(terms=[RewardTerm(fn="rm:nope")]), pool=object())
