"""The learner on a CUDA GPU (NCCL process group, FSDP2 on the device). Skipped without a GPU;
run with ``pytest -m gpu`` where one is present (see README)."""

import pytest
import torch

from or1.batch import SequenceBatch
from or1.config import AlgorithmConfig, LearnerConfig, ModelConfig, OptimConfig

from .conftest import free_port

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _batch() -> SequenceBatch:
    g = torch.Generator().manual_seed(0)
    prompts = [[40 + i, 41, 42] for i in range(8)]
    responses = [torch.randint(3, 200, (k,), generator=g).tolist() for k in (1, 3, 5, 2, 7, 4, 6, 2)]
    return SequenceBatch.from_lists(prompts, responses, advantages=torch.randn(8, generator=g))


def _nudged(batch: SequenceBatch, logp: torch.Tensor) -> SequenceBatch:
    return batch.with_values(old_log_probs=logp + 0.05 * torch.arange(logp.numel()).remainder(3))


def test_learner_on_gpu_matches_cpu_reference_and_round_trips(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from or1.workers.learner import Learner

    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    batch = _batch()
    port = free_port()
    learner = Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3), AlgorithmConfig(),
                      LearnerConfig(max_tokens_per_micro_batch=16), master_port=port)
    assert next(learner.model.parameters()).device.type == "cuda"

    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ref_lp = []
    with torch.no_grad():
        for prompt, response in batch.sequences():
            ids = torch.tensor([prompt + response])
            logp = torch.log_softmax(reference(input_ids=ids).logits[0, :-1].float(), -1)
            ref_lp.append(logp[len(prompt) - 1:].gather(1, ids[0, len(prompt):, None])[:, 0])
    lp = learner.compute_log_probs(batch)
    assert (lp - torch.cat(ref_lp)).abs().max().item() < 1e-4

    b = _nudged(batch, lp)
    whole = Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3),
                    learner_cfg=LearnerConfig(max_tokens_per_micro_batch=1000), master_port=port).update(b)
    micro = learner.update(b)
    assert micro["actor/micro_batches"] > whole["actor/micro_batches"] == 1
    assert micro["actor/grad_norm"] == pytest.approx(whole["actor/grad_norm"], rel=1e-4)
    assert micro["actor/pg_loss"] == pytest.approx(whole["actor/pg_loss"], rel=1e-4, abs=1e-6)

    learner.save_checkpoint(str(tmp_path))
    resumed = Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3),
                      learner_cfg=LearnerConfig(max_tokens_per_micro_batch=16), master_port=port)
    resumed.load_checkpoint(str(tmp_path))
    x, y = learner.update(b), resumed.update(b)
    assert x["actor/pg_loss"] == y["actor/pg_loss"] and x["actor/grad_norm"] == y["actor/grad_norm"]


def _float32_fsdp_and(tiny_model, **learner_options):
    """A plain float32 FSDP2 learner and one with ``learner_options``, same model, same process group."""
    from or1.workers.learner import Learner

    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    port = free_port()
    optim = OptimConfig(lr=1e-3)
    return (Learner(ModelConfig(path=str(tiny_model)), optim, learner_cfg=LearnerConfig(
                max_tokens_per_micro_batch=16), master_port=port),
            Learner(ModelConfig(path=str(tiny_model)), optim, learner_cfg=LearnerConfig(
                **{"max_tokens_per_micro_batch": 16, **learner_options}), master_port=port))


def test_bf16_mixed_precision_tracks_float32(tiny_model):
    """FSDP2 mixed precision: bf16 compute (packed: torch's varlen flash kernel), float32 master
    weights and gradient reduction."""
    batch = _batch()
    fp32, bf16 = _float32_fsdp_and(tiny_model, compute_dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.float32  # master weights stay float32
    lp32, lp16 = fp32.compute_log_probs(batch), bf16.compute_log_probs(batch)
    gap = (lp32 - lp16).abs().max().item()
    assert 0 < gap < 0.1, gap  # bf16 rounding, not garbage (and not silently float32)
    b = _nudged(batch, lp32)
    x, y = fp32.update(b), bf16.update(b)
    assert y["actor/grad_norm"] == pytest.approx(x["actor/grad_norm"], rel=0.05)
    assert y["actor/pg_loss"] == pytest.approx(x["actor/pg_loss"], rel=0.05, abs=1e-3)


def test_bf16_packed_flash_kernel_matches_bf16_padded(tiny_model):
    """The CUDA packed path (torch.nn.attention.varlen) against padded rows with SDPA, both in bf16."""
    from or1.workers.learner import Learner

    batch = _batch()
    port = free_port()
    packed, padded = (Learner(ModelConfig(path=str(tiny_model)), OptimConfig(lr=1e-3), learner_cfg=LearnerConfig(
        compute_dtype="bfloat16", max_tokens_per_micro_batch=32, padding_free=flag), master_port=port)
        for flag in (True, False))
    lp_packed, lp_padded = packed.compute_log_probs(batch), padded.compute_log_probs(batch)
    assert (lp_packed - lp_padded).abs().max().item() < 0.05  # bf16 rounding of two kernels
    b = _nudged(batch, lp_padded)
    x, y = packed.update(b), padded.update(b)
    assert x["actor/computed_tokens"] < y["actor/computed_tokens"]
    assert x["actor/grad_norm"] == pytest.approx(y["actor/grad_norm"], rel=0.05)


def test_deepspeed_zero3_on_gpu_matches_fsdp2(tiny_model):
    pytest.importorskip("deepspeed")
    batch = _batch()
    fsdp, ds = _float32_fsdp_and(tiny_model, backend="deepspeed")
    lp = fsdp.compute_log_probs(batch)
    assert (ds.compute_log_probs(batch) - lp).abs().max().item() < 1e-5
    b = _nudged(batch, lp)
    x, y = fsdp.update(b), ds.update(b)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
