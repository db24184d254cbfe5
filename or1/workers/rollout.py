"""The rollout worker: a Ray actor that owns one real vLLM engine.

It generates ``n`` responses per prompt from token ids the driver prepared, reports the
log-probability vLLM assigned to each sampled token, and takes new weights in place
(``update_weights``) without restarting the engine or touching disk.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from or1.config import RolloutConfig


@dataclass
class Sample:
    """One generated response. ``logprobs[i]`` is vLLM's log-prob of ``token_ids[i]``."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    truncated: bool  # stopped by the length limit rather than by EOS / a stop string


def by_prompt(samples: list[Sample], n: int, prompts: int) -> list[list[Sample]]:
    """The engines' samples as one list of ``n`` per prompt. They come back prompt by prompt, each
    prompt's ``n`` together; anything else is an error (a wrong count, samples out of order)."""
    if len(samples) != n * prompts:
        raise RuntimeError(f"the engines returned {len(samples)} samples for {prompts} prompts x {n}")
    groups = [samples[g * n:(g + 1) * n] for g in range(prompts)]
    for g, members in enumerate(groups):
        if any(s.prompt_index != g for s in members):
            raise RuntimeError(f"the engines returned prompt {g}'s samples out of order")
    return groups


class RolloutWorker:
    """Wrapped with ``ray.remote`` by the driver; plain class so it stays importable and testable."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, sleep_mode: bool = False,
                 ray_bundle_indices: list[int] | None = None):
        """``sleep_mode``: colocated with a learner on GPUs (``sleep``/``wake_up`` free and restore
        the engine's memory). ``ray_bundle_indices``: on GPUs, the placement-group bundles (one
        GPU each) vLLM's Ray executor uses for this engine's tensor-parallel workers."""
        # the run's worker environment sets it (or1.startup.worker_environment); standalone use: WARNING
        os.environ.setdefault("VLLM_LOGGING_LEVEL", cfg.vllm_log_level or "WARNING")
        # vLLM configures its loggers from that variable, but some modules warn while vLLM is still being
        # imported (Triton's CPU backend), through Python's last-resort handler: set the level first
        logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())
        if cfg.cpu_kvcache_space_gib is not None:
            # Must be set before vLLM reads its environment; it bounds the CPU KV cache.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_space_gib)
        extra = {}
        if ray_bundle_indices is not None:
            # vLLM's Ray executor places its workers on these bundles of the current placement group
            os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(map(str, ray_bundle_indices))
            os.environ["VLLM_RAY_PER_WORKER_GPUS"] = "0.5" if sleep_mode else "1"
            extra["distributed_executor_backend"] = "ray"
        if sleep_mode:
            extra["enable_sleep_mode"] = True
        from vllm import LLM

        self.cfg = cfg
        t0 = time.time()
        self.llm = LLM(
            model=model_path,
            dtype=str(cfg.dtype),
            max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size,
            seed=seed,
            worker_extension_cls="or1.workers.vllm_extension.WeightSyncExtension",
            enable_prefix_caching=cfg.enable_prefix_caching,
            **extra,
        )
        self.startup_seconds = time.time() - t0

    def ready(self) -> float:
        return self.startup_seconds

    def generate(self, prompt_token_ids: list[list[int]], n: int, temperature: float, top_p: float,
                 max_tokens: int, seeds: list[int] | None = None) -> list[Sample]:
        """Sample ``n`` responses per prompt; returns them grouped, prompt by prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                           logprobs=0, seed=None if seeds is None else seeds[i])
            for i in range(len(prompt_token_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        samples = []
        for i, out in enumerate(outputs):
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                lps = [completion.logprobs[j][tok].logprob for j, tok in enumerate(tokens)]
                samples.append(Sample(i, tokens, lps, completion.finish_reason == "length"))
        return samples

    def update_weights(self, payload, last: bool = True) -> int:
        """Load new weights (a buffer of ``or1.workers.weight_transfer``) in place.

        A push may come in several buckets, each holding whole layers; ``last`` marks the final
        one, after which derived state is refreshed. Returns the number of bytes loaded.
        """
        if not isinstance(payload, bytes):
            # collective_rpc's msgpack transport turns arrays into lists; bytes pass through as they are
            payload = memoryview(payload).tobytes()
        loaded = self.llm.collective_rpc("or1_update_weights", args=(payload, last))
        if last:
            # Prefix-cache entries were computed with the old weights; reusing them would mix policies.
            self.llm.reset_prefix_cache()
        return int(loaded[0])

    def sleep(self, level: int) -> None:
        """Free the engine's GPU memory while the learner trains (colocated placement)."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.llm.wake_up(tags=tags)

    def weight_checksum(self, names: list[str]) -> dict[str, float]:
        return self.llm.collective_rpc("or1_weight_checksum", args=(names,))[0]
