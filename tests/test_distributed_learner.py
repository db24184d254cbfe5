"""Data-parallel learner groups on CPU (gloo, real Ray actors) against a single rank.

Two FSDP2 ranks, and two DeepSpeed ZeRO-3 ranks, must produce the single-process run's
log-probs, loss, entropy and gradient norm on the same batch, and the same weights after the
step. The two-rank groups also compute their logits in chunks of 4 positions
(``learner.logits_chunk_tokens``, recomputed in the backward pass inside sharded modules); the
single rank computes them whole. The ranks get the sequences balanced by tokens, pack them into
micro-batches of at most 23 tokens and so run different numbers of micro-batches (1 and 2): the
rank with fewer runs a stand-in with zero loss to keep the collectives in step, and the global
token normaliser is what makes the ranks agree.
"""

import json

import pytest
import torch

from or1.batch import SequenceBatch
from or1.config import LearnerConfig, ModelConfig, OptimConfig
from or1.workers.group import LearnerGroup

from .conftest import free_port

pytestmark = pytest.mark.slow

COMPARED = ("actor/pg_loss", "actor/entropy", "actor/clipfrac", "actor/approx_kl", "actor/grad_norm",
            "actor/num_tokens")


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    lengths = (1, 3, 5, 2, 7, 4, 6)
    prompts = [[40 + i, 41 + i, 42] for i in range(len(lengths))]
    responses = [torch.randint(3, 200, (k,), generator=g).tolist() for k in lengths]
    return SequenceBatch.from_lists(prompts, responses, advantages=torch.randn(len(lengths), generator=g))


def start_group(ray, tiny_model, backend: str, world: int, max_tokens: int = 23,
                logits_chunk_tokens: int = 4) -> LearnerGroup:
    from or1.workers.learner import Learner

    port = free_port()
    optim_cfg = OptimConfig(lr=1e-3, grad_clip=0.0)
    learner_cfg = LearnerConfig(backend=backend, num_workers=world, torch_threads=1,
                                max_tokens_per_micro_batch=max_tokens, logits_chunk_tokens=logits_chunk_tokens)
    return LearnerGroup([ray.remote(num_cpus=0.5)(Learner).remote(
        ModelConfig(path=str(tiny_model)), optim_cfg, None, learner_cfg, rank, world, "127.0.0.1", port, 0)
        for rank in range(world)])


def one_step(group: LearnerGroup, batch):
    logp = group.compute_log_probs(batch)
    b = batch.with_values(old_log_probs=logp + 0.05)  # ratios != 1
    metrics = group.update(b, entropy_coef=0.01)
    weights = _get(group.actors[0].full_parameters.remote(), group)
    return logp, metrics, weights


def _get(ref, group):
    import ray

    # full_parameters is a collective: every rank must take part
    others = [a.full_parameters.remote() for a in group.actors[1:]]
    out = ray.get(ref)
    ray.get(others)
    return out


@pytest.fixture(scope="module")
def single_rank(ray_local, tiny_model, batch):
    group = start_group(ray_local, tiny_model, "fsdp", 1, max_tokens=1000, logits_chunk_tokens=0)
    result = one_step(group, batch)
    for a in group.actors:
        ray_local.kill(a)
    return result


@pytest.mark.parametrize("backend", ["fsdp", "deepspeed"])
def test_two_ranks_reproduce_one(ray_local, tiny_model, batch, single_rank, backend, tmp_path):
    ref_logp, ref_metrics, ref_weights = single_rank
    group = start_group(ray_local, tiny_model, backend, 2)
    # each rank read only its shard (FSDP2) / partition (ZeRO-3) of the checkpoint: together, bit for bit
    initial = _initial_weights(tiny_model)
    loaded = _get(group.actors[0].full_parameters.remote(), group)
    assert sorted(loaded) == sorted(initial) and all(torch.equal(loaded[n], initial[n]) for n in initial)
    logp, metrics, weights = one_step(group, batch)
    assert (logp - ref_logp).abs().max() < 1e-5
    # tokens 23 | 26 over the ranks: 10 + 7 + 6 in one micro-batch; 9 + 8 + 5, then 4
    assert metrics["actor/micro_batches"] == 3 and ref_metrics["actor/micro_batches"] == 1
    for key in COMPARED:
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-4, abs=1e-6), key
    assert ref_metrics["actor/grad_norm"] > 0.1
    # Adam's first step moves every weight by ~lr (1e-3) whatever its gradient's size, so weights
    # whose gradient is ~1e-8 (Adam's eps) amplify summation-order noise: measured up to 2e-6.
    for name, value in ref_weights.items():
        assert torch.allclose(weights[name], value, atol=1e-5), name
    moved = max((ref_weights[n] - w).abs().max().item() for n, w in initial.items())
    assert moved > 1e-4, "the step did not change the weights; the comparison proves nothing"

    # the final export streams bucket by bucket (learner.sync_bucket_mb) from the shards: bit for bit
    import ray

    ray.get([a.save_hf.remote(str(tmp_path / "final"), str(tiny_model), 1e-4) for a in group.actors])
    final = _initial_weights(tmp_path / "final")
    assert len(list((tmp_path / "final").glob("model-*-of-*.safetensors"))) > 1  # written shard by shard
    assert sorted(final) == sorted(weights) and all(torch.equal(final[n], weights[n]) for n in weights)

    group.save_checkpoint(str(tmp_path))
    # python -m or1.export reads either backend's sharded checkpoint in one process, bit for bit
    from or1.export import export_checkpoint

    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 1, "learner_backend": backend}))
    exported = _initial_weights(export_checkpoint(tmp_path, tmp_path / "exported"))
    assert sorted(exported) == sorted(weights)
    assert all(torch.equal(exported[n], weights[n]) for n in weights)
    # FSDP2's checkpoint reshards (two ranks' shards load into one); DeepSpeed's loads at its own size
    restored = start_group(ray_local, tiny_model, backend, 1 if backend == "fsdp" else 2)
    restored.load_checkpoint(str(tmp_path))
    reloaded = _get(restored.actors[0].full_parameters.remote(), restored)
    assert all(torch.equal(reloaded[n], weights[n]) for n in weights)
    if backend == "deepspeed":  # the optimizer state came back too: the next step is the same step
        b = batch.with_values(old_log_probs=logp)
        after, again = group.update(b, 0.01), restored.update(b, 0.01)
        for key in ("actor/pg_loss", "actor/grad_norm"):
            assert after[key] == again[key], key
    for a in restored.actors:
        ray_local.kill(a)
    for a in group.actors:
        ray_local.kill(a)


def _initial_weights(path):
    from transformers import AutoModelForCausalLM

    return {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(path).named_parameters()}
