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
class Request:
    """One prompt to sample for: or1's request id (unique per engine), its tokens, its vLLM seed."""

    request_id: str
    prompt_token_ids: list[int]
    seed: int | None = None


@dataclass
class Sampling:
    """How every request of a call is sampled."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int


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


def to_samples(output) -> list[Sample]:
    """A vLLM ``RequestOutput`` (``logprobs=0``, flat log-probs) as one ``Sample`` per completion
    (``prompt_index`` -1: the caller knows which prompt it was)."""
    samples = []
    for completion in output.outputs:
        tokens = list(completion.token_ids)
        flat = completion.logprobs  # logprobs=0: position j holds exactly the sampled token
        if len(flat.logprobs) != len(tokens) or flat.token_ids != tokens:
            raise RuntimeError(f"vLLM returned {len(flat.logprobs)} log-probs for {len(tokens)} sampled tokens")
        samples.append(Sample(-1, tokens, list(flat.logprobs), completion.finish_reason == "length"))
    return samples


class RolloutWorker:
    """Wrapped with ``ray.remote`` by the driver; plain class so it stays importable and testable."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, sleep_mode: bool = False,
                 ray_bundle_indices: list[int] | None = None, cpu_cores: list[int] | None = None):
        """``sleep_mode``: colocated with a learner on GPUs (``sleep``/``wake_up`` free and restore
        the engine's memory). ``ray_bundle_indices``: on GPUs, the placement-group bundles (one
        GPU each) vLLM's Ray executor uses for this engine's tensor-parallel workers. ``cpu_cores``:
        a CPU engine that generates while the learners train runs on these cores only (vLLM's own
        processes inherit the affinity; its OpenMP threads are bound to them)."""
        if cpu_cores:
            os.sched_setaffinity(0, cpu_cores)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpu_cores))
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
        self.calls = 0  # generate calls so far: request ids are unique per call
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
        self.calls += 1
        requests = [Request(f"or1-{self.calls}-{i}", ids, None if seeds is None else seeds[i])
                    for i, ids in enumerate(prompt_token_ids)]
        index_of = {r.request_id: i for i, r in enumerate(requests)}
        done = self.run_requests(requests, Sampling(n, temperature, top_p, max_tokens), [], len(requests))
        samples = []
        for request_id, members in sorted(done, key=lambda d: index_of[d[0]]):
            for s in members:
                s.prompt_index = index_of[request_id]
            samples += members
        return samples

    def run_requests(self, add: list[Request], sampling: Sampling, abort: list[str],
                     min_finished: int) -> list[tuple[str, list[Sample]]]:
        """Add ``add`` to the engine, abort the requests named in ``abort``, then step the engine
        until ``min_finished`` requests have finished (or none is left unfinished); returns each
        finished request's id and samples (``prompt_index`` -1: the caller knows the prompts).

        What ``LLM.generate`` does, cut into pieces: requests that have not finished stay in the
        engine for the next call, so a caller can score finished prompts, add prompts and abort
        others while the engine keeps its batch.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        if abort:
            engine.abort_request(abort)  # or1's ids are the engine's external ids
        for r in add:
            # logprobs=0: only the sampled token's; flat_logprobs: one list per response instead of a dict per
            # token; detokenize=False: the driver decodes once for the rewards, vLLM's text would go unused;
            # FINAL_ONLY: one output per prompt, once all n are done
            params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                    max_tokens=sampling.max_tokens, logprobs=0, flat_logprobs=True,
                                    detokenize=False, seed=r.seed, output_kind=RequestOutputKind.FINAL_ONLY)
            engine.add_request(r.request_id, TokensPrompt(prompt_token_ids=r.prompt_token_ids), params)
        finished: list[tuple[str, list[Sample]]] = []
        while len(finished) < min_finished and engine.has_unfinished_requests():
            finished += [(out.request_id, to_samples(out)) for out in engine.step() if out.finished]
        return finished

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
