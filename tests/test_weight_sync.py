"""After a weight push, vLLM's log-probs equal the learner's; before it, with changed weights, not.

Real Ray actors, a real vLLM engine and the FSDP2 learner. vLLM runs in float32 here so the
tolerance can be tight: 1e-4 nats per token (measured: ~4e-7). The learner's update is a real
optimizer step that changes every parameter, the tied embedding / LM head included (vLLM's CPU
path keeps a packed copy of that head, which a naive reload leaves stale).
"""

import pytest
import torch

from or1.batch import build_batch
from or1.config import ActorConfig, ModelConfig, RolloutConfig
from or1.data.dataset import render_prompt

from .conftest import free_port

TOL = 1e-4

pytestmark = pytest.mark.slow


def test_weight_push_makes_vllm_match_learner(tiny_model, ray_local):
    ray = ray_local
    from transformers import AutoTokenizer

    from or1.workers.learner import Learner
    from or1.workers.rollout import RolloutWorker

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rollout = ray.remote(num_cpus=1)(RolloutWorker).remote(
        str(tiny_model), RolloutConfig(max_model_len=64, dtype="float32", gpu_memory_utilization=0.05,
                                       cpu_kvcache_space_gib=1, enforce_eager=True))
    learner = ray.remote(num_cpus=1)(Learner).remote(
        ModelConfig(path=str(tiny_model)), ActorConfig(lr=1e-2, weight_decay=0.0, micro_batch_size=64),
        0, 1, "127.0.0.1", free_port(), 0)
    prompts = [render_prompt(tok, p, True) for p in ["1+2", "17+25", "9-4", "30+30"]]
    assert not ray.get(learner.has_reference_model.remote())  # KL off (OR1's default): no reference policy

    def vllm_vs_learner(seed: int):
        samples = ray.get(rollout.generate.remote(prompts, 4, 1.0, 1.0, 12, [seed + i for i in range(4)]))
        batch = build_batch([prompts[s.prompt_index] for s in samples], [s.token_ids for s in samples],
                            tok.pad_token_id, torch.zeros(len(samples)), [s.logprobs for s in samples])
        learner_lp = ray.get(learner.compute_log_probs.remote(batch))
        mask = batch["response_mask"].bool()
        assert mask.sum() > 20
        return (learner_lp - batch["rollout_log_probs"])[mask].abs().max().item(), batch, learner_lp

    gap, batch, learner_lp = vllm_vs_learner(0)
    assert gap < TOL, f"fresh engine and learner disagree by {gap}"

    batch["advantages"] = torch.randn(batch["input_ids"].shape[0], generator=torch.Generator().manual_seed(0))
    batch["old_log_probs"] = learner_lp
    ray.get(learner.update.remote(batch))

    stale_gap, _, _ = vllm_vs_learner(1)
    assert stale_gap > 100 * TOL, "the learner's update did not change its log-probs; the test proves nothing"

    nbytes = ray.get(rollout.update_weights.remote(learner.export_weights.remote("float32")))
    n_params = sum(p.numel() for p in
                   __import__("transformers").AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert nbytes == 4 * n_params  # every parameter, once (tied head not duplicated)

    synced_gap, _, _ = vllm_vs_learner(2)
    assert synced_gap < TOL, f"after the push vLLM and learner still disagree by {synced_gap}"
    ray.kill(rollout)
    ray.kill(learner)
