"""After a weight push every vLLM engine's log-probs equal the learners'; before it, with changed
weights, they do not.

Real Ray actors: two FSDP2 learner ranks (gloo) and two vLLM engines. vLLM runs in float32 so
the tolerance can be tight: 1e-4 nats per token (measured: ~4e-7). The learners' update is a real
optimizer step that changes every parameter, the tied embedding / LM head included (vLLM's CPU
path keeps a packed copy of that head, which a naive reload leaves stale). The push goes in
buckets far smaller than the model, so partial reloads must leave the other layers intact.
"""

import pytest
import torch

from or1.batch import build_batch
from or1.config import LearnerConfig, ModelConfig, OptimConfig, RolloutConfig
from or1.data.dataset import render_prompt
from or1.workers.group import LearnerGroup, RolloutGroup

from .conftest import free_port

TOL = 1e-4

pytestmark = pytest.mark.slow


def test_bucketed_push_makes_every_engine_match_the_learners(tiny_model, ray_local):
    ray = ray_local
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from or1.workers.learner import Learner
    from or1.workers.rollout import RolloutWorker

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rollout_cfg = RolloutConfig(max_model_len=64, dtype="float32", gpu_memory_utilization=0.05,
                                cpu_kvcache_space_gib=1, enforce_eager=True)
    engines = RolloutGroup([ray.remote(num_cpus=0.5)(RolloutWorker).remote(str(tiny_model), rollout_cfg, seed)
                            for seed in range(2)])
    port = free_port()
    learners = LearnerGroup([ray.remote(num_cpus=0.5)(Learner).remote(
        ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-2, weight_decay=0.0), None,
        LearnerConfig(num_workers=2, torch_threads=1, micro_batch_sequences=64), rank, 2, "127.0.0.1", port, 0)
        for rank in range(2)])
    prompts = [render_prompt(tok, p, True) for p in ["1+2", "17+25", "9-4", "30+30"]]
    assert not learners.has_reference_model()  # KL off (OR1's default): no reference policy

    def gaps(seed: int):
        """Per engine: the largest |vLLM log-prob - learners' log-prob| over its sampled tokens."""
        out = []
        for e, engine in enumerate(engines.actors):
            samples = ray.get(engine.generate.remote(prompts, 4, 1.0, 1.0, 12, [seed + 10 * e + i for i in range(4)]))
            batch = build_batch([prompts[s.prompt_index] for s in samples], [s.token_ids for s in samples],
                                tok.pad_token_id, torch.zeros(len(samples)), [s.logprobs for s in samples])
            learner_lp = learners.compute_log_probs(batch)
            mask = batch["response_mask"].bool()
            assert mask.sum() > 20
            out.append(((learner_lp - batch["rollout_log_probs"])[mask].abs().max().item(), batch, learner_lp))
        return out

    fresh = gaps(0)
    assert max(g for g, _, _ in fresh) < TOL, f"fresh engines and learners disagree: {[g for g, _, _ in fresh]}"

    _, batch, learner_lp = fresh[0]
    batch["advantages"] = torch.randn(batch["input_ids"].shape[0], generator=torch.Generator().manual_seed(0))
    batch["old_log_probs"] = learner_lp
    learners.update(batch, 0.0)

    stale = [g for g, _, _ in gaps(1)]
    assert min(stale) > 100 * TOL, "the learners' update did not change their log-probs; the test proves nothing"

    stats = learners.push_weights(engines, "float32", bucket_mb=0.2)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert stats["sync/bytes"] == 4 * n_params  # every parameter, once (tied head not duplicated)
    assert stats["sync/buckets"] >= 3  # the embedding and each decoder layer travelled separately

    synced = [g for g, _, _ in gaps(2)]
    assert max(synced) < TOL, f"after the push engines and learners still disagree: {synced}"
    embed = "model.embed_tokens.weight"
    learner_sum = float(ray.get([a.full_parameters.remote() for a in learners.actors])[0][embed].double().sum())
    for sums in engines.weight_checksums([embed]):
        assert sums[embed] == pytest.approx(learner_sum, rel=1e-9, abs=1e-6)
    for actor in engines.actors + learners.actors:
        ray.kill(actor)
