"""Driver-side handles on the worker groups: N learner ranks, M vLLM engines.

The driver calls these as it would call one actor; they split the work, call every member at
once and merge the answers. No maths here: the learners all-reduce their own loss normalisers.
"""

from __future__ import annotations

import torch

from or1.algo.packing import balance_ranks
from or1.batch import SequenceBatch
from or1.workers.learner import RANK_PARTIAL_METRICS
from or1.workers.rollout import Sample


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


def split_evenly(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous [start, end) ranges covering ``count`` items, sizes differing by at most one."""
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for p in range(parts):
        end = start + base + (1 if p < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class RolloutGroup:
    """vLLM engines (``or1.workers.rollout.RolloutWorker`` actors); prompts are split evenly."""

    def __init__(self, actors: list):
        self.actors = actors
        self.asleep = False

    def generate(self, prompt_token_ids: list[list[int]], n: int, temperature: float, top_p: float,
                 max_tokens: int, seeds: list[int] | None) -> list[Sample]:
        """Each engine samples all ``n`` responses of its prompts; results come back in prompt order.

        Seeds are per prompt, so which engine serves a prompt does not change its samples'
        distribution (nor, with seeds, the samples themselves up to batch-dependent numerics).
        """
        ranges = [r for r in split_evenly(len(prompt_token_ids), len(self.actors)) if r[1] > r[0]]
        refs = [a.generate.remote(prompt_token_ids[s:e], n, temperature, top_p, max_tokens,
                                  None if seeds is None else seeds[s:e])
                for a, (s, e) in zip(self.actors, ranges)]
        samples: list[Sample] = []
        for (start, _), part in zip(ranges, _get(refs)):
            for smp in part:
                smp.prompt_index += start
            samples += part
        return samples

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
