"""Peak memory and time of one learner update on a long sequence: whole logits vs chunked.

One FSDP2 learner rank, a random model with Qwen2.5's 152K vocabulary (no download), gradient
checkpointing on, one sequence of ``--tokens`` tokens per micro-batch. Side by side in one run,
each variant in its own process: ``learner.logits_chunk_tokens=0`` (the micro-batch's float32
logits whole) and ``=--chunk`` (computed and recomputed chunk by chunk). Peak memory: CUDA's
allocator peak on a GPU (bf16 compute), the process's peak resident set on CPU (float32).

    python benchmarks/learner_memory.py                                  # CPU: 2-layer model, 152K vocabulary
    python benchmarks/learner_memory.py --shape 0.5b --tokens 16384      # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.report import report  # noqa: E402
from benchmarks.weight_sync import SHAPES, make_model  # noqa: E402


def one_update(path: str, tokens: int, chunk: int, port: int) -> tuple[float, float, float]:
    """(peak GiB, update seconds, pg_loss) for one micro-batch of ``tokens`` tokens, in this process."""
    from or1.batch import SequenceBatch
    from or1.config import LearnerConfig, ModelConfig, OptimConfig
    from or1.workers.learner import Learner

    cuda = torch.cuda.is_available()
    learner = Learner(ModelConfig(path=path), OptimConfig(lr=1e-6), master_port=port,
                      learner_cfg=LearnerConfig(compute_dtype="bfloat16" if cuda else "float32",
                                                max_tokens_per_micro_batch=tokens, gradient_checkpointing=True,
                                                logits_chunk_tokens=chunk))
    g = torch.Generator().manual_seed(0)
    response = torch.randint(3, 150000, (tokens - 16,), generator=g).tolist()
    batch = SequenceBatch.from_lists([list(range(100, 116))], [response], advantages=[1.0])
    batch = batch.with_values(old_log_probs=learner.compute_log_probs(batch))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = learner.update(batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return peak, seconds, metrics["actor/pg_loss"]


def in_subprocess(path: str, tokens: int, chunk: int) -> tuple[float, float, float]:
    """Each variant in a fresh process: the CPU peak (ru_maxrss) never goes down within one."""
    out = subprocess.run([sys.executable, __file__, "--variant", path, "--tokens", str(tokens), "--chunk", str(chunk)],
                         capture_output=True, text=True, check=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny-152k", choices=sorted(SHAPES))
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--json", default=None)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: one update on this model dir
    a = p.parse_args()
    if a.variant:
        print(json.dumps(one_update(a.variant, a.tokens, a.chunk, 29561)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = make_model(a.shape, os.path.join(tmp, "model"))
        whole = in_subprocess(path, a.tokens, 0)
        chunked = in_subprocess(path, a.tokens, a.chunk)
    cuda = torch.cuda.is_available()
    row = {
        "model": f"{a.shape} shape, {'bf16' if cuda else 'float32'} compute, gradient checkpointing",
        "device": torch.cuda.get_device_name() if cuda else "cpu (peak resident set)",
        "tokens": a.tokens, "chunk_tokens": a.chunk,
        "whole_peak_gib": whole[0], "chunked_peak_gib": chunked[0], "peak_ratio": chunked[0] / whole[0],
        "whole_update_s": whole[1], "chunked_update_s": chunked[1], "time_ratio": chunked[1] / whole[1],
        "pg_loss_whole": whole[2], "pg_loss_chunked": chunked[2],
    }
    report(row, a.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                      f"learner_memory_{a.shape}_{a.tokens}.json"))


if __name__ == "__main__":
    main()
