"""The FSDP2 learner in-process (gloo, world size 1): micro-batching, packing and padding never
change the step, and packed log-probs are what the plain Hugging Face model computes."""

import dataclasses
import math

import pytest
import torch

from or1.batch import SequenceBatch
from or1.config import AlgorithmConfig, LearnerConfig, ModelConfig, OptimConfig

from .conftest import free_port

LENGTHS = (1, 3, 5, 2, 7, 4)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    prompts = [[40 + i, 41 + i, 42][: 1 + i % 3] for i in range(len(LENGTHS))]  # prompts of 1-3 tokens
    responses = [list(torch.randint(3, 200, (k,), generator=g).tolist()) for k in LENGTHS]
    return SequenceBatch.from_lists(prompts, responses, advantages=torch.randn(len(LENGTHS), generator=g))


def nudged(batch, logp):
    """The batch with old log-probs a little off the current policy's (ratios != 1, some clipped)."""
    return batch.with_values(old_log_probs=logp + 0.05 * torch.arange(logp.numel()).remainder(3))


def make_learner(tiny_model, port, algo=None, lr=1e-3, **learner):
    from or1.workers.learner import Learner

    return Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=lr), algo, LearnerConfig(**learner),
                   master_port=port)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batches_reproduce_the_whole_batch(tiny_model, batch, mode):
    results = []
    port = free_port()
    # one micro-batch; every sequence alone; token budgets that pack several; rows in order, padded
    for layout in ({"max_tokens_per_micro_batch": 1000}, {"max_tokens_per_micro_batch": 1},
                   {"max_tokens_per_micro_batch": 12}, {"max_tokens_per_micro_batch": 0, "micro_batch_sequences": 4,
                                                        "padding_free": False}):
        learner = make_learner(tiny_model, port, AlgorithmConfig(loss_agg_mode=mode), **layout)
        b = nudged(batch, learner.compute_log_probs(batch))
        results.append((learner.update(b, entropy_coef=0.01), layout))
    whole = results[0][0]
    assert [r["actor/micro_batches"] for r, _ in results] == [1, 6, 3, 2]
    for other, layout in results[1:]:
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/clipfrac"):
            assert other[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), (key, layout)
    assert whole["actor/grad_norm"] > 0 and whole["actor/skipped_update"] == 0.0


def reference_log_probs(model_dir, batch: SequenceBatch) -> torch.Tensor:
    """Each sequence alone through the plain Hugging Face model (no or1 code): log p of its response tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, response in batch.sequences():
            ids = torch.tensor([prompt + response])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            out.append(logp[len(prompt) - 1:, :].gather(1, ids[0, len(prompt):, None])[:, 0])
    return torch.cat(out)


def test_packed_and_padded_micro_batches_compute_the_same_step_as_the_plain_model(tiny_model, batch):
    """Packed: several sequences in one row, attention kept inside each; padded: one row each. Both must
    give the log-probs of each sequence run alone through transformers, and the same loss, entropy,
    gradient norm and updated policy."""
    port = free_port()
    results = []
    for padding_free in (True, False):
        learner = make_learner(tiny_model, port, max_tokens_per_micro_batch=20, padding_free=padding_free)
        logp = learner.compute_log_probs(batch)
        metrics = learner.update(nudged(batch, logp), entropy_coef=0.01)
        results.append((logp, metrics, learner.compute_log_probs(batch)))
    (lp_packed, m_packed, after_packed), (lp_padded, m_padded, after_padded) = results
    assert m_packed["actor/micro_batches"] < len(LENGTHS)  # several sequences did share a row
    assert m_packed["actor/computed_tokens"] == batch.token_ids.numel()  # not one padding token
    assert m_padded["actor/computed_tokens"] > batch.token_ids.numel()
    reference = reference_log_probs(tiny_model, batch)
    assert (lp_packed - reference).abs().max() < 1e-5
    assert (lp_padded - reference).abs().max() < 1e-5
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/clipfrac", "actor/approx_kl"):
        assert m_packed[key] == pytest.approx(m_padded[key], rel=1e-5, abs=1e-7), key
    assert (after_packed - lp_packed).abs().max() > 1e-3  # the step moved the policy
    assert (after_packed - after_padded).abs().max() < 1e-5


def test_a_model_that_ignores_packed_attention_is_refused(tiny_model, monkeypatch):
    """If a model's attention layers bypass transformers' interface, packed sequences would attend to
    each other with no error: the learner refuses at start-up and names the setting to use."""
    import or1.workers.varlen_attention as varlen

    monkeypatch.setattr(varlen, "use_varlen_attention", lambda model: None)  # the model keeps plain SDPA
    with pytest.raises(RuntimeError, match="learner.padding_free=false"):
        make_learner(tiny_model, free_port())


def test_batch_without_loss_tokens_skips_the_step(tiny_model, batch):
    learner = make_learner(tiny_model, free_port())
    empty = SequenceBatch.from_lists([p for p, _ in batch.sequences()], [[] for _ in range(batch.num_sequences)])
    empty = empty.with_values(old_log_probs=torch.zeros(0))
    before = [p.detach().clone() for p in learner.model.parameters()]
    assert learner.update(empty)["actor/skipped_update"] == 1.0
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, learner.model.parameters()))


def test_lr_warmup_and_its_state_survive_a_checkpoint(tiny_model, batch, tmp_path):
    from or1.workers.learner import Learner

    cfg = OptimConfig(lr=1e-2, lr_warmup_steps=4)
    port = free_port()
    learner = Learner(ModelConfig(path=str(tiny_model)), cfg, master_port=port)
    b = batch.with_values(old_log_probs=learner.compute_log_probs(batch))
    assert [learner.update(b)["actor/lr"] for _ in range(2)] == pytest.approx([0.0025, 0.005])
    learner.save_checkpoint(str(tmp_path))
    resumed = Learner(ModelConfig(path=str(tiny_model)), cfg, master_port=port)
    resumed.load_checkpoint(str(tmp_path))
    a, r = learner.update(b), resumed.update(b)
    assert a["actor/lr"] == r["actor/lr"] == pytest.approx(0.0075)
    assert a["actor/pg_loss"] == r["actor/pg_loss"] and a["actor/grad_norm"] == r["actor/grad_norm"]


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_logits_give_the_same_log_probs_loss_and_gradient(tiny_model, batch, chunk):
    """learner.logits_chunk_tokens never materialises all logits; the numbers must not change."""
    port = free_port()
    results = []
    for chunk_tokens in (0, chunk):
        learner = make_learner(tiny_model, port, max_tokens_per_micro_batch=12, logits_chunk_tokens=chunk_tokens)
        logp = learner.compute_log_probs(batch)
        metrics = learner.update(nudged(batch, logp), entropy_coef=0.01)
        results.append((logp, metrics, learner.full_parameters(), learner.compute_log_probs(batch)))
    (lp_full, m_full, w_full, after_full), (lp_chunk, m_chunk, w_chunk, after_chunk) = results
    assert torch.allclose(lp_chunk, lp_full, atol=1e-6)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/clipfrac"):
        assert m_chunk[key] == pytest.approx(m_full[key], rel=1e-5, abs=1e-7), key
    assert list(w_chunk) == list(w_full)  # same parameter names (the tied head is still the embedding)
    # the same step: the updated policies agree (weights themselves differ by up to ~lr where a
    # gradient is ~Adam's eps, where summation order decides the sign)
    assert (after_chunk - lp_full).abs().max() > 1e-3  # the step moved the policy
    assert torch.allclose(after_chunk, after_full, atol=1e-5)


def test_tis_weights_each_tokens_loss_by_the_learner_over_vllm_ratio(tiny_model, batch):
    """vLLM's log-probs log(4) below the learner's: every token's weight exp(log 4) = 4 is capped at 1.5,
    so the surrogate loss is 1.5 times the unweighted one; replayed rows (no vLLM log-probs) weigh 1."""
    port = free_port()
    losses = {}
    replayed = dataclasses.replace(batch, fresh=torch.tensor([False] * len(LENGTHS)))
    for cap, b in ((None, batch), (1.5, batch), (1.5, replayed)):
        learner = make_learner(tiny_model, port, AlgorithmConfig(tis_cap=cap), max_tokens_per_micro_batch=1000)
        logp = learner.compute_log_probs(b)
        b = b.with_values(old_log_probs=logp, rollout_log_probs=logp - math.log(4.0))
        losses[cap, bool(b.fresh.all())] = learner.update(b, entropy_coef=0.0)
    plain, weighted, replays = losses[None, True], losses[1.5, True], losses[1.5, False]
    assert weighted["actor/pg_loss"] == pytest.approx(1.5 * plain["actor/pg_loss"], rel=1e-5)
    assert weighted["actor/tis_weight"] == pytest.approx(1.5) and "actor/tis_weight" not in plain
    assert replays["actor/pg_loss"] == pytest.approx(plain["actor/pg_loss"], rel=1e-5)
    assert abs(plain["actor/pg_loss"]) > 1e-3
