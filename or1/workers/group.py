"""Driver-side handles on the worker groups: N learner ranks, M vLLM engines.

The driver calls these as it would call one actor; they split the work, call every member at
once and merge the answers. No maths here: the learners all-reduce their own loss normalisers.
"""

from __future__ import annotations

import torch

from or1.algo.packing import balance_ranks
from or1.batch import SequenceBatch
from or1.workers.learner import RANK_PARTIAL_METRICS
from or1.workers.rollout import Request, Sample, Sampling


def _get(refs):
    import ray

    return ray.get(refs)


class LearnerGroup:
    """Data-parallel learner ranks (``or1.workers.learner.Learner`` actors, rank order)."""

    def __init__(self, actors: list):
        self.actors = actors
        self._bucket_plans: dict[tuple[str, float], list[list[str]]] = {}

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def shard(self, batch: SequenceBatch) -> tuple[list[list[int]], list[SequenceBatch]]:
        """Each rank's sequences (balanced by tokens, ``or1.algo.packing.balance_ranks``) and its batch."""
        rows = balance_ranks(batch.sequence_lengths().tolist(), self.world_size)
        return rows, [batch.select(r) for r in rows]

    def compute_log_probs(self, batch: SequenceBatch, reference: bool = False) -> torch.Tensor:
        """``[batch.num_response_tokens]`` log-probs in the batch's order."""
        rows, shards = self.shard(batch)
        parts = _get([a.compute_log_probs.remote(s, reference) for a, s in zip(self.actors, shards)])
        return batch.scatter_response_values(parts, rows)

    def update(self, batch: SequenceBatch, entropy_coef: float) -> dict[str, float]:
        """One optimizer step over all ranks; per-rank partial sums are added up."""
        _, shards = self.shard(batch)
        results = _get([a.update.remote(s, entropy_coef) for a, s in zip(self.actors, shards)])
        merged = dict(results[0])
        for key in merged:
            if key in RANK_PARTIAL_METRICS:
                merged[key] = float(sum(r[key] for r in results))
            elif key.startswith("time/"):
                merged[key] = float(max(r[key] for r in results))
        return merged

    def save_checkpoint(self, path: str) -> None:
        _get([a.save_checkpoint.remote(path) for a in self.actors])

    def load_checkpoint(self, path: str) -> None:
        _get([a.load_checkpoint.remote(path) for a in self.actors])

    def save_hf(self, out_dir: str, tokenizer_path: str | None) -> str:
        return _get([a.save_hf.remote(out_dir, tokenizer_path) for a in self.actors])[0]

    def has_reference_model(self) -> bool:
        return _get(self.actors[0].has_reference_model.remote())

    def push_weights(self, rollouts: RolloutGroup, dtype: str, bucket_mb: float) -> dict[str, float]:
        """Gather the policy bucket by bucket and load each bucket into every vLLM engine.

        At most one bucket is in flight: the learners gather it (a collective), rank 0 puts one
        serialised copy in Ray's object store, every engine loads it, then the next bucket starts.
        Nothing touches disk.
        """
        key = (dtype, bucket_mb)
        if key not in self._bucket_plans:
            self._bucket_plans[key] = _get(self.actors[0].weight_bucket_plan.remote(dtype, bucket_mb))
        plan = self._bucket_plans[key]
        total = 0
        for i, names in enumerate(plan):
            refs = [a.export_bucket.remote(names, dtype) for a in self.actors]
            loaded = rollouts.update_weights(refs[0], last=i == len(plan) - 1)
            _get(refs[1:])
            total += loaded
        return {"sync/bytes": float(total), "sync/buckets": float(len(plan))}


class RolloutGroup:
    """vLLM engines (``or1.workers.rollout.RolloutWorker`` actors); each prompt goes to the engine with
    the fewest in flight (``RolloutSession``)."""

    def __init__(self, actors: list):
        self.actors = actors
        self.asleep = False
        self.sessions = 0  # sessions opened: request ids are unique per engine

    def generate(self, prompt_token_ids: list[list[int]], n: int, temperature: float, top_p: float,
                 max_tokens: int, seeds: list[int] | None) -> list[Sample]:
        """Each engine samples all ``n`` responses of its prompts; results come back in prompt order.

        Seeds are per prompt, so which engine serves a prompt does not change its samples'
        distribution (nor, with seeds, the samples themselves up to batch-dependent numerics).
        """
        samples = [s for chunk in self.generate_stream(prompt_token_ids, n, temperature, top_p, max_tokens, seeds)
                   for s in chunk]
        return sorted(samples, key=lambda s: s.prompt_index)  # stable: each prompt's n keep their order

    def generate_stream(self, prompt_token_ids: list[list[int]], n: int, temperature: float, top_p: float,
                        max_tokens: int, seeds: list[int] | None):
        """``generate`` as prompts finish: yields lists of whole prompts' samples (``prompt_index``
        into ``prompt_token_ids``), in whatever order the engines finish them."""
        session = self.session(Sampling(n, temperature, top_p, max_tokens))
        session.add([(i, ids, None if seeds is None else seeds[i]) for i, ids in enumerate(prompt_token_ids)])
        while finished := session.next_finished():
            chunk = []
            for index, samples in finished:
                for smp in samples:
                    smp.prompt_index = index
                chunk += samples
            yield chunk

    def session(self, sampling: Sampling) -> "RolloutSession":
        self.sessions += 1
        return RolloutSession(self.actors, sampling, self.sessions)

    def update_weights(self, payload, last: bool) -> int:
        loaded = _get([a.update_weights.remote(payload, last) for a in self.actors])
        assert len(set(loaded)) == 1, f"engines loaded different amounts: {loaded}"
        return int(loaded[0])

    def sleep(self, level: int) -> None:
        _get([a.sleep.remote(level) for a in self.actors])
        self.asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Restore the memory named by ``tags`` ("weights", "kv_cache"; None: all). Awake once the
        KV cache is back."""
        _get([a.wake_up.remote(tags) for a in self.actors])
        if tags is None or "kv_cache" in tags:
            self.asleep = False

    def weight_checksums(self, names: list[str]) -> list[dict[str, float]]:
        return _get([a.weight_checksum.remote(names) for a in self.actors])


CHUNKS_PER_ENGINE = 8  # an engine hands back its finished prompts in about this many chunks


class RolloutSession:
    """Prompts sampled on the group's engines as the caller adds them; finished prompts come back as
    the engines finish them, and the caller may add more or abort the rest at any point (the
    trainer's streaming refill). A prompt goes to the engine with the fewest in flight; each busy
    engine has one ``run_requests`` call outstanding, which returns once about 1/8 of its prompts
    have finished, so an engine idles only for the round trip. Keys are the caller's."""

    def __init__(self, actors: list, sampling: Sampling, session_id: int):
        self.actors, self.sampling, self.session_id = actors, sampling, session_id
        self.in_flight: list[dict[str, object]] = [{} for _ in actors]  # per engine: request id -> key
        self.to_add: list[list[Request]] = [[] for _ in actors]
        self.to_abort: list[list[str]] = [[] for _ in actors]
        self.calls: dict[int, object] = {}  # engine -> its outstanding call
        self.requests = 0

    @property
    def pending(self) -> int:
        """Prompts added and neither handed back nor aborted."""
        return sum(len(f) for f in self.in_flight)

    def add(self, prompts: list[tuple[object, list[int], int | None]]) -> None:
        """Sample ``(key, prompt token ids, seed)`` prompts."""
        for key, ids, seed in prompts:
            engine = min(range(len(self.actors)), key=lambda e: len(self.in_flight[e]))
            request_id = f"or1-s{self.session_id}-{self.requests}"
            self.requests += 1
            self.to_add[engine].append(Request(request_id, list(ids), seed))
            self.in_flight[engine][request_id] = key
        self._issue()

    def _issue(self) -> None:
        for e, actor in enumerate(self.actors):
            if e in self.calls or not (self.in_flight[e] or self.to_abort[e]):
                continue
            chunk = -(-len(self.in_flight[e]) // CHUNKS_PER_ENGINE)
            self.calls[e] = actor.run_requests.remote(self.to_add[e], self.sampling, self.to_abort[e], chunk)
            self.to_add[e], self.to_abort[e] = [], []

    def next_finished(self) -> list[tuple[object, list[Sample]]]:
        """Blocks until an engine hands back finished prompts: ``(key, samples)`` each; [] once
        nothing is in flight."""
        import ray

        while self.calls:
            engines, refs = zip(*self.calls.items())
            ready, _ = ray.wait(list(refs), num_returns=1)
            e = engines[refs.index(ready[0])]
            del self.calls[e]
            done = [(self.in_flight[e].pop(rid), samples) for rid, samples in ray.get(ready[0])
                    if rid in self.in_flight[e]]
            self._issue()
            if done:
                return done
        return []

    def abort(self) -> None:
        """Drop every prompt still in flight; returns once every engine is idle (nothing of this
        session left in it: the weights may change next)."""
        import ray

        for e in range(len(self.actors)):
            queued = {r.request_id for r in self.to_add[e]}
            self.to_abort[e] += [rid for rid in self.in_flight[e] if rid not in queued]
            self.to_add[e], self.in_flight[e] = [], {}
        ray.get(list(self.calls.values()))
        self.calls = {}
        self._issue()  # the aborts (a call with nothing to wait for)
        ray.get(list(self.calls.values()))
        self.calls = {}
