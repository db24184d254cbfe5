"""The learner on a CUDA GPU (NCCL process group, FSDP2 on the device). Skipped without a GPU;
run with ``pytest -m gpu`` where one is present (see README)."""

import pytest
import torch

from or1.batch import build_batch
from or1.config import AlgorithmConfig, LearnerConfig, ModelConfig, OptimConfig

from .conftest import free_port

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_learner_on_gpu_matches_cpu_reference_and_round_trips(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from or1.algo.losses import token_log_probs_and_entropy
    from or1.workers.learner import Learner

    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    g = torch.Generator().manual_seed(0)
    prompts = [[40 + i, 41, 42] for i in range(8)]
    responses = [torch.randint(3, 200, (k,), generator=g).tolist() for k in (1, 3, 5, 2, 7, 4, 6, 2)]
    batch = build_batch(prompts, responses, pad_id=0, advantages=torch.randn(8, generator=g))
    port = free_port()
    learner = Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3), AlgorithmConfig(),
                      LearnerConfig(micro_batch_sequences=3), master_port=port)
    assert next(learner.model.parameters()).device.type == "cuda"

    reference = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        ref_lp, _ = token_log_probs_and_entropy(
            reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            batch["input_ids"], with_entropy=False)
    lp = learner.compute_log_probs(batch)
    mask = batch["response_mask"].bool()
    assert (lp - ref_lp)[mask].abs().max().item() < 1e-4

    batch["old_log_probs"] = lp + 0.05 * batch["response_mask"]
    whole = Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3),
                    learner_cfg=LearnerConfig(micro_batch_sequences=8), master_port=port).update(dict(batch))
    micro = learner.update(dict(batch))
    assert micro["actor/grad_norm"] == pytest.approx(whole["actor/grad_norm"], rel=1e-4)
    assert micro["actor/pg_loss"] == pytest.approx(whole["actor/pg_loss"], rel=1e-4, abs=1e-6)

    learner.save_checkpoint(str(tmp_path))
    resumed = Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3),
                      learner_cfg=LearnerConfig(micro_batch_sequences=3), master_port=port)
    resumed.load_checkpoint(str(tmp_path))
    a, b = learner.update(dict(batch)), resumed.update(dict(batch))
    assert a["actor/pg_loss"] == b["actor/pg_loss"] and a["actor/grad_norm"] == b["actor/grad_norm"]


def _batch():
    g = torch.Generator().manual_seed(0)
    prompts = [[40 + i, 41, 42] for i in range(8)]
    responses = [torch.randint(3, 200, (k,), generator=g).tolist() for k in (1, 3, 5, 2, 7, 4, 6, 2)]
    return build_batch(prompts, responses, pad_id=0, advantages=torch.randn(8, generator=g))


def _float32_fsdp_and(tiny_model, micro_batch_size: int, **learner_options):
    """A plain float32 FSDP2 learner and one with ``learner_options``, same model, same process group."""
    from or1.workers.learner import Learner

    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    port = free_port()
    optim = OptimConfig(lr=1e-3)
    return (Learner(ModelConfig(path=str(tiny_model)), optim, learner_cfg=LearnerConfig(
                micro_batch_sequences=micro_batch_size), master_port=port),
            Learner(ModelConfig(path=str(tiny_model)), optim, learner_cfg=LearnerConfig(
                micro_batch_sequences=micro_batch_size, **learner_options), master_port=port))


def test_bf16_mixed_precision_tracks_float32(tiny_model):
    """FSDP2 mixed precision: bf16 compute, float32 master weights and gradient reduction."""
    batch = _batch()
    fp32, bf16 = _float32_fsdp_and(tiny_model, 8, compute_dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.float32  # master weights stay float32
    lp32, lp16 = fp32.compute_log_probs(batch), bf16.compute_log_probs(batch)
    mask = batch["response_mask"].bool()
    gap = (lp32 - lp16)[mask].abs().max().item()
    assert 0 < gap < 0.1, gap  # bf16 rounding, not garbage (and not silently float32)
    batch["old_log_probs"] = lp32 + 0.05 * batch["response_mask"]
    a, b = fp32.update(dict(batch)), bf16.update(dict(batch))
    assert b["actor/grad_norm"] == pytest.approx(a["actor/grad_norm"], rel=0.05)
    assert b["actor/pg_loss"] == pytest.approx(a["actor/pg_loss"], rel=0.05, abs=1e-3)


def test_deepspeed_zero3_on_gpu_matches_fsdp2(tiny_model):
    pytest.importorskip("deepspeed")
    batch = _batch()
    fsdp, ds = _float32_fsdp_and(tiny_model, 3, backend="deepspeed")
    lp = fsdp.compute_log_probs(batch)
    assert (ds.compute_log_probs(batch) - lp)[batch["response_mask"].bool()].abs().max().item() < 1e-5
    batch["old_log_probs"] = lp + 0.05 * batch["response_mask"]
    a, b = fsdp.update(dict(batch)), ds.update(dict(batch))
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
