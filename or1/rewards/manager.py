"""Scores a step's responses with the configured reward terms, routed by ``data_source``.

Every term is resolved (imported, signature checked) when the manager is built, so a bad
configuration fails at start-up. Terms run in ``RewardPool`` worker processes under a hard
deadline; a term that raises, times out or crashes gives ``reward.fallback_score`` for that
response and is counted in ``reward/errors`` / ``reward/timeouts``: it never kills the run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from or1.config import RewardConfig, RewardTerm
from or1.rewards import code as code_reward
from or1.rewards.loader import RewardConfigError, load_reward_fn, reward_value
from or1.rewards.pool import ItemResult, RewardPool

log = logging.getLogger("or1")


@dataclass
class RewardScores:
    rewards: torch.Tensor  # [N] the weighted sum of the terms
    correct: torch.Tensor  # [N] 0/1
    metrics: dict[str, float] = field(default_factory=dict)


RM_PREFIX = "rm:"


class LocalSandbox:
    """``python -m sandbox`` on a free loopback port, for the length of a run."""

    def __init__(self, max_concurrency: int = 0, start_timeout_s: float = 30.0):
        import socket
        import subprocess
        import sys
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "sandbox", "--host", "127.0.0.1", "--port", str(port)]
        if max_concurrency:
            cmd += ["--max-concurrency", str(max_concurrency)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + start_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the local sandbox service failed to start: {self.proc.stdout.read()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).read()
                log.info("sandbox service running at %s", self.url)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the local sandbox service did not answer within {start_timeout_s}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()


def term_name(term: RewardTerm) -> str:
    return term.name or term.fn.rpartition(":")[2]


class RewardManager:
    def __init__(self, cfg: RewardConfig, pool: RewardPool | None = None):
        self.cfg = cfg
        self.default_terms = list(cfg.terms) or [RewardTerm(fn=cfg.fn)]
        self.routes = {source: list(terms) for source, terms in cfg.routes.items()}
        for terms in [self.default_terms, *self.routes.values()]:
            if not terms:
                raise ValueError("a reward route needs at least one term")
            for t in terms:
                if t.fn.startswith(RM_PREFIX):
                    if t.fn[len(RM_PREFIX):] not in cfg.reward_models:
                        raise RewardConfigError(f"reward term {t.fn!r} names no model in reward.reward_models "
                                                f"(known: {sorted(cfg.reward_models)})")
                else:
                    load_reward_fn(t.fn, dict(t.kwargs))  # raises RewardConfigError with the reason
        self.sandbox = None
        if cfg.sandbox.start_local:
            self.sandbox = LocalSandbox(cfg.sandbox.max_concurrency)
            os.environ[code_reward.URL_ENV] = self.sandbox.url  # inherited by the pool's workers
        elif cfg.sandbox.url:
            os.environ[code_reward.URL_ENV] = cfg.sandbox.url
        self.pool = pool or RewardPool(cfg.num_workers, cfg.timeout_s, cfg.memory_mb)
        self.reward_models: dict = {}  # name -> Ray actor handle, see start_reward_models

    def start_reward_models(self) -> None:
        """Start one Ray actor per configured reward model (Ray must be initialised)."""
        import ray

        from or1.rewards.reward_model import RewardModelWorker

        for name, m in self.cfg.reward_models.items():
            self.reward_models[name] = ray.remote(num_cpus=m.num_cpus, num_gpus=m.num_gpus)(
                RewardModelWorker).remote(m.path, m.dtype, m.batch_size, m.max_length)
        for actor in self.reward_models.values():
            ray.get(actor.__ray_ready__.remote())

    def terms_for(self, row: dict) -> list[RewardTerm]:
        return self.routes.get(row.get("data_source", ""), self.default_terms)

    def score(self, responses: list[str], rows: list[dict]) -> RewardScores:
        """One call per step: every (response, term) pair goes to the pool at once."""
        plan = [(i, t) for i, row in enumerate(rows) for t in self.terms_for(row)]
        fn_plan = [(k, i, t) for k, (i, t) in enumerate(plan) if not t.fn.startswith(RM_PREFIX)]
        pending = self.pool.submit_batch([(t.fn, dict(t.kwargs), responses[i], rows[i]) for _, i, t in fn_plan])
        results: list[ItemResult | None] = [None] * len(plan)
        rm_results = self._score_with_models(plan, responses, rows)  # runs while the pool works
        for (k, _, _), res in zip(fn_plan, pending.result()):
            results[k] = res
        for k, res in rm_results.items():
            results[k] = res
        rewards = np.zeros(len(rows))
        correct: list[float | None] = [None] * len(rows)
        primary_score: dict[int, float] = {}
        per_term: dict[str, list[float]] = {}
        failures = {"error": 0, "timeout": 0}
        for (i, t), res in zip(plan, results):
            name = term_name(t)
            value, extras = self.cfg.fallback_score, {}
            if res.status == "ok":
                try:
                    value, extras = reward_value(res.value)
                except (TypeError, ValueError) as exc:
                    failures["error"] += 1
                    log.warning("reward %s returned an unusable value: %s", name, exc)
            else:
                failures[res.status] += 1
                if failures[res.status] <= 3:
                    log.warning("reward %s %s on a sample (%s); scored %s", name, res.status, res.error,
                                self.cfg.fallback_score)
            rewards[i] += t.weight * value
            primary_score.setdefault(i, value)
            if "acc" in extras and correct[i] is None:
                correct[i] = float(extras["acc"])
            per_term.setdefault(name, []).append(value)
            for k, v in extras.items():
                per_term.setdefault(f"{name}/{k}", []).append(v)
        # correct: the first term reporting "acc" decides; otherwise the first term's score >= 1
        acc = [c if c is not None else float(primary_score.get(i, 0.0) >= 1.0) for i, c in enumerate(correct)]
        metrics = {f"reward/{k}": float(np.mean(v)) for k, v in per_term.items()}
        metrics["reward/errors"] = float(failures["error"])
        metrics["reward/timeouts"] = float(failures["timeout"])
        metrics["time/reward_slowest_item"] = max((r.seconds for r in results), default=0.0)
        return RewardScores(torch.tensor(rewards, dtype=torch.float32), torch.tensor(acc), metrics)

    def _score_with_models(self, plan, responses: list[str], rows: list[dict]) -> dict[int, ItemResult]:
        """Batched reward-model scores for the plan's ``rm:`` terms, keyed by plan position."""
        import ray

        by_model: dict[str, list[tuple[int, int]]] = {}
        for k, (i, t) in enumerate(plan):
            if t.fn.startswith(RM_PREFIX):
                by_model.setdefault(t.fn[len(RM_PREFIX):], []).append((k, i))
        out: dict[int, ItemResult] = {}
        calls = {}
        for name, pairs in by_model.items():
            if name not in self.reward_models:
                raise RuntimeError("reward models are not started; call start_reward_models() first")
            key = self.cfg.reward_models[name].prompt_key
            calls[name] = self.reward_models[name].score.remote([str(rows[i].get(key, "")) for _, i in pairs],
                                                                [responses[i] for _, i in pairs])
        for name, ref in calls.items():
            try:
                values = ray.get(ref)
                for (k, _), v in zip(by_model[name], values):
                    out[k] = ItemResult("ok", v)
            except Exception as exc:  # the actor failed: every pair of this model gets the fallback
                for k, _ in by_model[name]:
                    out[k] = ItemResult("error", error=f"reward model {name}: {exc!r}"[:300])
        return out

    def close(self) -> None:
        import ray

        self.pool.close()
        if self.sandbox is not None:
            self.sandbox.stop()
        for actor in self.reward_models.values():
            ray.kill(actor)
