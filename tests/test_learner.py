"""The FSDP2 learner in-process (gloo, world size 1): micro-batching never changes the step."""

import pytest
import torch

from or1.batch import build_batch
from or1.config import AlgorithmConfig, LearnerConfig, ModelConfig, OptimConfig

from .conftest import free_port


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    prompts = [[40 + i, 41 + i, 42] for i in range(6)]
    responses = [list(torch.randint(3, 200, (k,), generator=g).tolist()) for k in (1, 3, 5, 2, 7, 4)]
    b = build_batch(prompts, responses, pad_id=0, advantages=torch.randn(6, generator=g))
    return b


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batches_reproduce_the_whole_batch(tiny_model, batch, mode):
    from or1.workers.learner import Learner

    results = []
    port = free_port()
    for micro in (6, 1, 4):
        learner = Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3), AlgorithmConfig(loss_agg_mode=mode),
                          LearnerConfig(micro_batch_sequences=micro), master_port=port)
        b = dict(batch)
        b["old_log_probs"] = learner.compute_log_probs(b) + 0.05 * b["response_mask"]  # ratios != 1
        results.append(learner.update(b, entropy_coef=0.01))
    whole = results[0]
    for other in results[1:]:
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/clipfrac"):
            assert other[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key
    assert whole["actor/grad_norm"] > 0 and whole["actor/skipped_update"] == 0.0


def test_batch_without_loss_tokens_skips_the_step(tiny_model, batch):
    from or1.workers.learner import Learner

    learner = Learner(ModelConfig(path=str(tiny_model)), learner_cfg=LearnerConfig(micro_batch_sequences=4),
                      master_port=free_port())
    b = dict(batch)
    b["response_mask"] = torch.zeros_like(b["response_mask"])
    b["old_log_probs"] = torch.zeros_like(b["response_mask"])
    before = [p.detach().clone() for p in learner.model.parameters()]
    assert learner.update(b)["actor/skipped_update"] == 1.0
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, learner.model.parameters()))


def test_lr_warmup_and_its_state_survive_a_checkpoint(tiny_model, batch, tmp_path):
    from or1.workers.learner import Learner

    cfg = OptimConfig(lr=1e-2, lr_warmup_steps=4)
    port = free_port()
    learner = Learner(ModelConfig(path=str(tiny_model)), cfg, learner_cfg=LearnerConfig(micro_batch_sequences=8),
                      master_port=port)
    b = dict(batch)
    b["old_log_probs"] = learner.compute_log_probs(b)
    assert [learner.update(b)["actor/lr"] for _ in range(2)] == pytest.approx([0.0025, 0.005])
    learner.save_checkpoint(str(tmp_path))
    resumed = Learner(ModelConfig(path=str(tiny_model)), cfg, learner_cfg=LearnerConfig(micro_batch_sequences=8),
                      master_port=port)
    resumed.load_checkpoint(str(tmp_path))
    a, r = learner.update(b), resumed.update(b)
    assert a["actor/lr"] == r["actor/lr"] == pytest.approx(0.0075)
    assert a["actor/pg_loss"] == r["actor/pg_loss"] and a["actor/grad_norm"] == r["actor/grad_norm"]


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_logits_give_the_same_log_probs_loss_and_gradient(tiny_model, batch, chunk):
    """learner.logits_chunk_tokens never materialises all logits; the numbers must not change."""
    from or1.workers.learner import Learner

    port = free_port()
    results = []
    for chunk_tokens in (0, chunk):
        learner = Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3),
                          learner_cfg=LearnerConfig(micro_batch_sequences=4, logits_chunk_tokens=chunk_tokens),
                          master_port=port)
        b = dict(batch)
        logp = learner.compute_log_probs(b)
        b["old_log_probs"] = logp + 0.05 * b["response_mask"]
        metrics = learner.update(b, entropy_coef=0.01)
        results.append((logp, metrics, learner.full_parameters(), learner.compute_log_probs(b)))
    (lp_full, m_full, w_full, after_full), (lp_chunk, m_chunk, w_chunk, after_chunk) = results
    assert torch.allclose(lp_chunk, lp_full, atol=1e-6)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/clipfrac"):
        assert m_chunk[key] == pytest.approx(m_full[key], rel=1e-5, abs=1e-7), key
    assert list(w_chunk) == list(w_full)  # same parameter names (the tied head is still the embedding)
    # the same step: the updated policies agree (weights themselves differ by up to ~lr where a
    # gradient is ~Adam's eps, where summation order decides the sign)
    assert (after_chunk - lp_full).abs().max() > 1e-3  # the step moved the policy
    assert torch.allclose(after_chunk, after_full, atol=1e-5)
