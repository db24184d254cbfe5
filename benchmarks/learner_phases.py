"""Peak device memory of one learner rank in each phase (init, update, save) against the dry run's estimate.

One FSDP2 learner rank loads a random model of a Qwen2.5 shape from safetensors (written here,
tensor by tensor; no download), runs one update on one micro-batch of ``--tokens`` tokens
(gradient checkpointing, chunked logits, bf16 compute on a GPU) and writes the Hugging Face
export, measuring the allocator's peak in each phase (``torch.cuda.max_memory_allocated``; on
CPU the process's peak resident set, for trying the script out). Each measured peak is set
beside ``or1.placement.estimate_memory_gib``'s for the same settings; a phase whose peak exceeds
its estimate by more than 10% (+0.5 GiB) FAILs, which makes this step 2 of ``scripts/gpu_smoke.sh``.

    python benchmarks/learner_phases.py --shape 1.5b                              # float32 master weights
    python benchmarks/learner_phases.py --shape 7b --master-dtype bfloat16        # 7B fits one 80 GB GPU so
    .venv/bin/python benchmarks/learner_phases.py --shape tiny --tokens 256       # CPU: the script itself
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.report import report  # noqa: E402

GiB = 2**30
SHAPES = {  # Qwen2.5 configurations (hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings)
    "tiny": (128, 2, 2, 1, 256, 1000, True),
    "0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "7b": (3584, 28, 28, 4, 18944, 152064, False),
}


def write_random_qwen2(out: str, shape: tuple, dtype: torch.dtype, reuse: bool = False) -> int:
    """A random Qwen2 model of ``shape`` (hidden, layers, heads, kv heads, intermediate, vocab, tied)
    in safetensors, written one tensor at a time (never the whole model in memory); returns its
    parameter count. With ``reuse``, a complete model already in ``out`` is kept."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from or1.workers.hf_io import ModelDirWriter

    hidden, layers, heads, kv, inter, vocab, tied = shape
    cfg = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                      tie_word_embeddings=tied, max_position_embeddings=32768)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    params = list(meta.named_parameters())  # tied weights once
    count = sum(p.numel() for _, p in params)
    if reuse and os.path.exists(os.path.join(out, "config.json")):  # written last: the model is complete
        return count
    writer = ModelDirWriter(out, [(n, tuple(p.shape), dtype) for n, p in params], 2 * GiB)
    g = torch.Generator().manual_seed(0)
    for name, p in params:
        t = torch.ones(p.shape) if name.endswith("norm.weight") else torch.randn(p.shape, generator=g) * 0.02
        writer.add({name: t.to(dtype)})
    writer.finish([meta.config, meta.generation_config], None)
    return count


class Peak:
    """Peak memory during a ``with`` block (GiB): device allocator on CUDA; on CPU the process's
    resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above its level at entry."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            self.base = rss_kib("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def so_far_gib(self) -> float:
        """The peak up to now (CPU)."""
        return (rss_kib("VmHWM") - self.base) / 2**20

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / GiB
        else:
            self.gib = self.so_far_gib()
        self.seconds = time.perf_counter() - self.t0


def rss_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process, KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="1.5b", choices=sorted(SHAPES))
    p.add_argument("--master-dtype", default="float32", choices=["float32", "bfloat16"], help="model.dtype")
    p.add_argument("--tokens", type=int, default=4096, help="tokens in the one micro-batch of the update")
    p.add_argument("--chunk", type=int, default=2048, help="learner.logits_chunk_tokens")
    p.add_argument("--bucket-mb", type=float, default=1024, help="learner.sync_bucket_mb (the save's bucket)")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from or1.batch import SequenceBatch
    from or1.config import LearnerConfig, ModelConfig, OptimConfig, OR1Config
    from or1.placement import ModelShape, estimate_memory_gib, free_port, plan_placement
    from or1.workers.learner import Learner

    cuda = torch.cuda.is_available()
    dtype = getattr(torch, a.master_dtype)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        write_random_qwen2(model_dir, SHAPES[a.shape], dtype)
        learner_cfg = LearnerConfig(compute_dtype="bfloat16" if cuda else "float32",
                                    max_tokens_per_micro_batch=a.tokens,
                                    gradient_checkpointing=True, logits_chunk_tokens=a.chunk,
                                    sync_bucket_mb=a.bucket_mb)
        model_cfg = ModelConfig(path=model_dir, dtype=a.master_dtype)
        with Peak(cuda) as init:
            learner = Learner(model_cfg, OptimConfig(lr=1e-6), None, learner_cfg, master_port=free_port())
        num_params = sum(p.numel() for p in learner.model.parameters())
        vocab = SHAPES[a.shape][5]
        g = torch.Generator().manual_seed(0)
        response = torch.randint(3, vocab, (a.tokens - 16,), generator=g).tolist()
        batch = SequenceBatch.from_lists([list(range(100, 116))], [response], advantages=[1.0])
        batch = batch.with_values(old_log_probs=learner.compute_log_probs(batch))
        with Peak(cuda) as update:
            metrics = learner.update(batch)
        with Peak(cuda) as save:
            learner.save_hf(os.path.join(tmp, "export"))

    # the dry run's estimate for the same settings: one GPU, one micro-batch of a.tokens tokens
    cfg = OR1Config()
    cfg.model.dtype, cfg.learner = model_cfg.dtype, learner_cfg
    cfg.trainer.gpus_per_node, cfg.trainer.placement = 2, "split"
    cfg.rollout.num_engines, cfg.rollout.max_model_len = 1, a.tokens
    hidden, layers, *_ = SHAPES[a.shape]
    est = estimate_memory_gib(cfg, plan_placement(cfg), ModelShape(float(num_params), hidden, layers, vocab))
    row = {"shape": a.shape, "params_b": num_params / 1e9, "master_dtype": a.master_dtype, "tokens": a.tokens,
           "device": torch.cuda.get_device_name() if cuda else "cpu", "pg_loss": metrics["actor/pg_loss"]}
    verdicts = []
    for phase, measured in (("init", init), ("update", update), ("save", save)):
        expected = est[f"peak_{phase}"]
        ok = measured.gib <= 1.1 * expected + 0.5
        verdicts.append(ok)
        row.update({f"{phase}_peak_gib": measured.gib, f"{phase}_estimate_gib": expected,
                    f"{phase}_s": measured.seconds, f"{phase}_within_estimate": "PASS" if ok else "FAIL"})
    report(row, a.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"learner_phases_{a.shape}_{a.master_dtype}.json"))
    if cuda and not all(verdicts):  # the estimate is only checked where it is made for: a GPU
        raise SystemExit(1)


if __name__ == "__main__":
    main()
