"""or1's generation phase against bare vLLM on identical requests, side by side in one run.

The tiny recipe's work: its model (warmed up briefly, float32, eager), its prompts, 32 prompts x
n=16 responses of at most 8 tokens at temperature 1, per-prompt seeds, the sampled token's
log-prob (``logprobs=0``). Two engines live at once and take turns, batch by batch:

- ``or1``: the trainer's rollout group (``or1.placement.start_workers`` with the tiny recipe's
  engines-only plan: one ``RolloutWorker`` Ray actor), timed as the driver sees it
  (``RolloutGroup.generate``: request construction, the actor hop, result conversion).
- ``vllm``: ``vllm.LLM.generate`` called in this process with the same prompts, parameters and
  seeds, results left as vLLM returns them.

The ratio is the median of or1's batch times over the median of bare vLLM's.

    .venv/bin/python benchmarks/rollout.py [--batches 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.report import report  # noqa: E402


def tiny_config(out: str, warmup_steps: int):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from or1.config import register_configs
    from or1.train import RECIPES_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        cfg = compose(config_name="tiny_cpu", overrides=[
            "recipe=tiny_cpu", f"trainer.output_dir={out}", f"tiny.warmup_steps={warmup_steps}"])
    return OmegaConf.to_object(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=16, help="timed batches per side (after one warm-up each)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--warmup-steps", type=int, default=300, help="supervised steps of the tiny model")
    p.add_argument("--work-dir", default=None, help="reuse a tiny model and data here (default: a temp dir)")
    p.add_argument("--json", default="benchmarks/results/rollout_tiny.json")
    args = p.parse_args()

    import ray
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from or1.data.dataset import PromptDataset
    from or1.placement import plan_engines_only, start_workers
    from or1.startup import connect_ray, create_tiny_model, read_data, write_tiny_data
    from or1.trainer import sampling_seeds

    out = args.work_dir or tempfile.mkdtemp(prefix="or1_rollout_bench_")
    cfg = tiny_config(os.path.abspath(out), args.warmup_steps)
    write_tiny_data(cfg)
    if not os.path.isdir(cfg.model.path):
        create_tiny_model(cfg)
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    rows, _ = read_data(cfg, with_val=False)
    data = PromptDataset.from_rows(rows, tok, cfg.data.max_prompt_length, cfg.data.apply_chat_template, "train")
    r = cfg.rollout

    connect_ray(cfg)
    workers = start_workers(cfg, plan_engines_only(cfg))
    ray.get([a.ready.remote() for a in workers.rollouts.actors])
    bare = LLM(model=cfg.model.path, dtype=str(r.dtype), max_model_len=r.max_model_len,
               gpu_memory_utilization=r.gpu_memory_utilization, enforce_eager=r.enforce_eager, seed=cfg.trainer.seed,
               enable_prefix_caching=r.enable_prefix_caching)

    def run_or1(prompts, seeds):
        return workers.rollouts.generate(prompts, args.n, r.temperature, r.top_p, args.max_tokens, seeds)

    def run_bare(prompts, seeds):
        params = [SamplingParams(n=args.n, temperature=r.temperature, top_p=r.top_p, max_tokens=args.max_tokens,
                                 logprobs=0, seed=s) for s in seeds]
        return bare.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)

    times: dict[str, list[float]] = {"or1": [], "vllm": []}
    tokens: dict[str, int] = {"or1": 0, "vllm": 0}
    for b in range(args.batches + 1):  # batch 0 warms both up and is not counted
        start = (b * args.prompts) % len(data)
        prompts = [data.prompt_ids[(start + i) % len(data)] for i in range(args.prompts)]
        seeds = sampling_seeds(cfg.trainer.seed, b, args.prompts)
        for name, fn in (("or1", run_or1), ("vllm", run_bare)) if b % 2 else (("vllm", run_bare), ("or1", run_or1)):
            t0 = time.perf_counter()
            result = fn(prompts, seeds)
            seconds = time.perf_counter() - t0
            if b:
                times[name].append(seconds)
                tokens[name] += (sum(len(s.token_ids) for s in result) if name == "or1"
                                 else sum(len(c.token_ids) for o in result for c in o.outputs))
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens, "batches": args.batches,
        "or1_s_median": med["or1"], "vllm_s_median": med["vllm"],
        "or1_tokens_per_s": tokens["or1"] / sum(times["or1"]), "vllm_tokens_per_s": tokens["vllm"] / sum(times["vllm"]),
        "ratio_or1_over_vllm": med["or1"] / med["vllm"],
        "or1_s_all": [round(t, 3) for t in times["or1"]], "vllm_s_all": [round(t, 3) for t in times["vllm"]],
    }
    report(row, args.json)
    workers.remove()


if __name__ == "__main__":
    main()
