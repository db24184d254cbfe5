"""Weight export for the push into vLLM: whole model vs buckets of whole layers, and or1's
buffer format vs safetensors.

One FSDP2 learner rank (CUDA if present, else CPU) holding a randomly initialised model of a
Qwen2.5 shape (no download). For each way of exporting, measures the time to gather and
serialise every parameter in the push dtype (bfloat16), the peak extra device memory and the
largest payload held at once (what Ray's object store and the vLLM side must hold). The
safetensors variant is the format or1 used before (pageable copy to the host, then
``safetensors.torch.save``), measured side by side.

    python benchmarks/weight_sync.py [--shape 0.5b|1.5b] [--bucket-mb 256] [--json PATH]
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

SHAPES = {  # Qwen2.5 configurations (hidden, layers, heads, kv heads, intermediate, vocab)
    "0.5b": (896, 24, 14, 2, 4864, 151936),
    "1.5b": (1536, 28, 12, 2, 8960, 151936),
    "tiny-152k": (256, 2, 4, 1, 1024, 151936),  # CPU-sized body, real vocabulary (for logits memory)
}


def make_model(shape: str, out: str) -> str:
    from transformers import AutoModelForCausalLM, Qwen2Config

    hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
    cfg = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                      tie_word_embeddings=True, max_position_embeddings=4096)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return out


def measure(fn, device: torch.device) -> tuple[float, float, int]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    largest = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else float("nan")
    return seconds, extra, largest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="0.5b", choices=sorted(SHAPES))
    p.add_argument("--bucket-mb", type=float, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from or1.config import ModelConfig
    from or1.workers.learner import Learner

    with tempfile.TemporaryDirectory() as tmp:
        path = make_model(a.shape, os.path.join(tmp, "model"))
        learner = Learner(ModelConfig(path=path), master_port=29555)
    device = learner.device
    plan = learner.weight_bucket_plan("bfloat16", a.bucket_mb)

    everything = [n for names in plan for n in names]

    def whole() -> int:
        return len(learner.export_bucket(everything, "bfloat16"))

    def bucketed() -> int:
        return max(len(learner.export_bucket(names, "bfloat16")) for names in plan)

    def bucketed_safetensors() -> int:
        from safetensors.torch import save

        return max(len(save({n: t.to(torch.bfloat16).cpu() for n, t in learner.backend.gather(names).items()}))
                   for names in plan)

    results = {}
    for name, fn in (("whole", whole), ("bucketed", bucketed), ("bucketed_safetensors", bucketed_safetensors)):
        fn()  # warm-up
        runs = [measure(fn, device) for _ in range(a.repeats)]
        results[name] = (sorted(r[0] for r in runs)[len(runs) // 2], max(r[1] for r in runs), runs[0][2] / 2**20)
    n_params = sum(p.numel() for p in learner.model.parameters())
    row = {
        "model": f"Qwen2.5-{a.shape} shape, {n_params / 1e9:.2f}B parameters, bfloat16 push",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "buckets": len(plan), "bucket_mib": a.bucket_mb,
        "whole_seconds": results["whole"][0], "bucketed_seconds": results["bucketed"][0],
        "bucketed_time_vs_whole": results["bucketed"][0] / results["whole"][0],
        "whole_peak_extra_device_mib": results["whole"][1], "bucketed_peak_extra_device_mib": results["bucketed"][1],
        "whole_largest_payload_mib": results["whole"][2], "bucketed_largest_payload_mib": results["bucketed"][2],
        "bucketed_payload_vs_whole": results["bucketed"][2] / results["whole"][2],
        "safetensors_bucketed_seconds": results["bucketed_safetensors"][0],
        "bucketed_speedup_vs_safetensors": results["bucketed_safetensors"][0] / results["bucketed"][0],
        "bucketed_gb_per_s": n_params * 2 / results["bucketed"][0] / 1e9,
    }
    report(row, a.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                      f"weight_sync_{a.shape}.json"))


if __name__ == "__main__":
    main()
