"""Learner throughput: packed token-budget micro-batches vs padded row micro-batches, side by side.

One FSDP2 learner rank per variant, each in its own process, on the same random Qwen2 model (no
download) and the same batch: ``--sequences`` responses with an OR1-like length distribution
(log-normal, median a sixth of the limit, a long tail cut at ``--max-response``: most responses
short, some truncated at the limit) after prompts of 64-256 tokens. One learner update = the
log-prob pass + the optimizer step, as the driver runs them. Variants, alternated ``--repeats``
times (medians reported):

- packed: ``learner.padding_free=true``, ``max_tokens_per_micro_batch=--budget`` (or1 now);
- padded: ``padding_free=false``, ``max_tokens_per_micro_batch=0``, ``micro_batch_sequences=--rows``:
  consecutive rows padded to the longest of each micro-batch (or1 before, and TRL).

Reported: tokens/s (real tokens, prompt + response, per second of the update), the speed-up,
bytes moved driver -> learner per step (the ragged batch vs the padded tensors the driver built
before: int64 ids and attention mask, float32 response mask and per-position log-probs, sent for
the log-prob pass and again with the old log-probs for the update, plus the returned log-probs),
peak memory of each variant's process (CPU: resident set; GPU: allocator peak of an update), and
the loss and gradient-norm differences of the first update (the same step, so ~0 in float32). On
a GPU also MFU: (6 x params x tokens + attention FLOPs) for the update plus a third of that for the
log-prob pass, over the measured bf16 matmul peak.

    .venv/bin/python benchmarks/learner_throughput.py     # CPU; writes results/learner_throughput_tiny-body_2048.json
    python benchmarks/learner_throughput.py --shape 1.5b --max-response 16384 --sequences 64 --rows 1  # GPU
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import pickle
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.learner_phases import write_random_qwen2  # noqa: E402
from benchmarks.report import report  # noqa: E402

SHAPES = {  # (hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings)
    "tiny-body": (256, 4, 4, 2, 1024, 4096, True),  # head_dim 64, CPU-sized
    "1.5b": (1536, 28, 12, 2, 8960, 151936, True),
}


def or1_like_lengths(count: int, limit: int, seed: int) -> tuple[list[int], list[int]]:
    """(prompt lengths, response lengths): prompts 64-256 tokens; responses log-normal with median
    limit / 6 and sigma 1.2, cut at ``limit`` (about 7% truncated), at least 16 tokens."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(64, 257, (count,), generator=g).tolist()
    z = torch.randn(count, generator=g)
    responses = [int(min(limit, max(16, round(limit / 6 * math.exp(1.2 * float(x)))))) for x in z]
    return prompts, responses


def make_batch(prompts: list[int], responses: list[int], vocab: int, seed: int):
    from or1.batch import SequenceBatch

    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(3, vocab, (p + r,), generator=g).tolist() for p, r in zip(prompts, responses)]
    return SequenceBatch.from_lists([t[:p] for t, p in zip(tokens, prompts)], [t[p:] for t, p in zip(tokens, prompts)],
                                    advantages=torch.randn(len(prompts), generator=g),
                                    rollout_log_probs=[[0.0] * r for r in responses])


def ragged_bytes(batch) -> int:
    """Driver -> learner per step now: the batch for the log-prob pass, the log-probs back, the batch
    with its old log-probs for the update (one mini-batch), each as Ray serialises it (pickle)."""
    with_old = batch.with_values(old_log_probs=torch.zeros(batch.num_response_tokens))
    return len(pickle.dumps(batch)) + 4 * batch.num_response_tokens + len(pickle.dumps(with_old))


def padded_bytes(batch) -> int:
    """The same traffic in the layout or1 used before packing (``or1/batch.py`` at commit 17a9488):
    ``[B, L]`` int64 input_ids and attention_mask, float32 response_mask and rollout_log_probs, ``[B]``
    advantages; ``[B, L]`` float32 log-probs back; then all of it again with ``[B, L]`` old_log_probs."""
    rows, width = batch.num_sequences, int(batch.sequence_lengths().max())
    sent = rows * width * (8 + 8 + 4 + 4) + 4 * rows
    return sent + 4 * rows * width + sent + 4 * rows * width


def model_flops(num_params: int, layers: int, hidden: int, lengths: list[int]) -> float:
    """FLOPs of one update (forward + backward, 3 x forward) and one log-prob pass (forward): 2 x params
    per token per forward, plus causal attention (QK^T and AV: 2 x s^2 x hidden per layer and sequence).
    Activation recomputation is not counted (model FLOPs, not hardware FLOPs)."""
    forward = 2 * num_params * sum(lengths) + 2 * layers * hidden * sum(s * s for s in lengths)
    return 4 * forward


def bf16_peak_flops() -> float:
    """Measured: the best of a few 8192^3 bf16 matmuls."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * 8192**3 / best


def variant_worker(conn, model_dir: str, learner_cfg, batch, port: int) -> None:
    """One variant's learner in its own process (its own peak memory), running one update per request."""
    from or1.config import ModelConfig, OptimConfig
    from or1.workers.learner import Learner

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    learner = Learner(ModelConfig(path=model_dir), OptimConfig(lr=1e-6), None, learner_cfg, master_port=port)
    while conn.recv():
        try:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            b = batch.with_values(old_log_probs=learner.compute_log_probs(batch))
            metrics = learner.update(b, entropy_coef=0.0)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else \
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, the process's peak
            conn.send((metrics, seconds, peak))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            conn.send(({}, float("nan"), float("nan")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny-body", choices=sorted(SHAPES))
    p.add_argument("--sequences", type=int, default=32, help="responses in the batch")
    p.add_argument("--max-response", type=int, default=2048, help="the length limit (tokens)")
    p.add_argument("--budget", type=int, default=0, help="packed: max_tokens_per_micro_batch (0: 256 + limit)")
    p.add_argument("--rows", type=int, default=8, help="padded: micro_batch_sequences (or1's old default: 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=0, help="learner.logits_chunk_tokens (GPU: 2048)")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (on by default on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from or1.config import LearnerConfig
    from or1.placement import free_port

    cuda = torch.cuda.is_available()
    shape = SHAPES[a.shape]
    hidden, layers, vocab = shape[0], shape[1], shape[5]
    budget = a.budget or a.max_response + 256
    prompts, responses = or1_like_lengths(a.sequences, a.max_response, a.seed)
    batch = make_batch(prompts, responses, vocab, a.seed)
    lengths = batch.sequence_lengths().tolist()
    common = dict(compute_dtype="bfloat16" if cuda else "float32", logits_chunk_tokens=a.chunk or (2048 if cuda else 0),
                  gradient_checkpointing=a.checkpointing or cuda)
    variants = {
        "packed": LearnerConfig(max_tokens_per_micro_batch=budget, padding_free=True, **common),
        "padded": LearnerConfig(max_tokens_per_micro_batch=0, micro_batch_sequences=a.rows, padding_free=False,
                                **common),
    }
    runs: dict[str, list[tuple[dict, float, float]]] = {name: [] for name in variants}
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        num_params = write_random_qwen2(model_dir, shape, torch.float32)
        workers = {}
        for name, cfg in variants.items():
            parent, child = spawn.Pipe()
            proc = spawn.Process(target=variant_worker, args=(child, model_dir, cfg, batch, free_port()))
            proc.start()
            workers[name] = (parent, proc)
        for _ in range(a.repeats):  # alternated, so both see the same machine
            for name, (conn, _) in workers.items():
                conn.send(True)
                runs[name].append(conn.recv())
        for conn, proc in workers.values():
            conn.send(False)
            proc.join()

    tokens = sum(lengths)
    seconds = {name: statistics.median(r[1] for r in rs) for name, rs in runs.items()}
    first = {name: rs[0][0] for name, rs in runs.items()}
    row = {
        "model": f"{a.shape} (Qwen2, {num_params / 1e6:.1f}M parameters), {common['compute_dtype']} compute",
        "device": torch.cuda.get_device_name() if cuda else f"cpu, {min(2, os.cpu_count() or 1)} threads",
        "sequences": a.sequences, "max_response": a.max_response,
        "tokens": tokens, "response_tokens": batch.num_response_tokens,
        "truncated_fraction": sum(r == a.max_response for r in responses) / len(responses),
        "packed_budget_tokens": budget, "padded_rows": a.rows,
        "packed_tokens_per_s": tokens / seconds["packed"], "padded_tokens_per_s": tokens / seconds["padded"],
        "speedup": seconds["padded"] / seconds["packed"],
        "packed_computed_tokens": first["packed"].get("actor/computed_tokens", float("nan")),
        "padded_computed_tokens": first["padded"].get("actor/computed_tokens", float("nan")),
        "packed_micro_batches": first["packed"].get("actor/micro_batches", float("nan")),
        "padded_micro_batches": first["padded"].get("actor/micro_batches", float("nan")),
        "packed_bytes_per_step": ragged_bytes(batch), "padded_bytes_per_step": padded_bytes(batch),
        # CUDA: the allocator's peak during an update; CPU: the learner process's peak resident set
        "packed_peak_gib": max(r[2] for r in runs["packed"]), "padded_peak_gib": max(r[2] for r in runs["padded"]),
        "loss_abs_diff": abs(first["packed"].get("actor/pg_loss", float("nan"))
                             - first["padded"].get("actor/pg_loss", float("nan"))),
        "grad_norm_rel_diff": abs(first["packed"].get("actor/grad_norm", float("nan"))
                                  / first["padded"].get("actor/grad_norm", float("nan")) - 1),
        "packed_grad_norm": first["packed"].get("actor/grad_norm", float("nan")),
        "padded_grad_norm": first["padded"].get("actor/grad_norm", float("nan")),
        "packed_s": seconds["packed"], "padded_s": seconds["padded"], "repeats": a.repeats,
    }
    row["bytes_ratio"] = row["padded_bytes_per_step"] / row["packed_bytes_per_step"]
    if cuda:
        peak = bf16_peak_flops()
        flops = model_flops(num_params, layers, hidden, lengths)
        row["bf16_peak_tflops_measured"] = peak / 1e12
        row["packed_mfu"] = flops / seconds["packed"] / peak
        row["padded_mfu"] = flops / seconds["padded"] / peak
    report(row, a.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"learner_throughput_{a.shape}_{a.max_response}.json"))


if __name__ == "__main__":
    main()
