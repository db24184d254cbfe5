"""Scores a step's responses with the configured reward terms, routed by ``data_source``.

Every term is resolved (imported, signature checked) when the manager is built, its start-up
check runs (the code verifier: the sandbox answers), and the pool's workers load and warm it up,
so a bad configuration fails at start-up, in seconds. ``check_on_rows`` then tries each term once
on a real data row. Terms run in ``RewardPool`` worker processes under a hard deadline (the
term's own ``deadline_s`` hook, else ``reward.timeout_s``); a term that raises, times out,
crashes or returns something that is not a number gives ``reward.fallback_score`` for that
response and is counted in ``reward/errors`` / ``reward/timeouts``: it never kills a step. The
first few failures of each term are logged in full, later ones as one count per call.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from or1.config import RewardConfig, RewardRoute, RewardTerm
from or1.data.rows import prompt_text
from or1.rewards import code as code_reward
from or1.rewards.loader import RewardConfigError, load_reward_fn, reward_hook, reward_value
from or1.rewards.pool import ItemResult, RewardPool, RewardWorkerStartError

log = logging.getLogger("or1")

RM_PREFIX = "rm:"
WARN_IN_FULL = 3  # failures of one term (per kind) logged with their message; later ones are counted


@dataclass
class RewardScores:
    """The scores of one call, and what is needed to report several calls (refill rounds) as one."""

    rewards: torch.Tensor  # [N] the weighted sum of the terms
    correct: torch.Tensor  # [N] 0/1
    # "<term>" and "<term>/<extra>" -> every value produced (a term only scores the rows routed to it)
    values: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0  # (response, term) items that raised, crashed or returned an unusable value
    timeouts: int = 0
    items: int = 0  # (response, term) items scored
    slowest_item_s: float = 0.0
    first_failure: str = ""  # one failure's message, for the error when every item fails
    # per response: each term's score and extras ("<term>", "<term>/<extra>") and any failure ("<term>/failed")
    details: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.errors + self.timeouts

    def metrics(self) -> dict[str, float]:
        out = {f"reward/{k}": float(np.mean(v)) for k, v in self.values.items() if v}
        out["reward/errors"] = float(self.errors)
        out["reward/timeouts"] = float(self.timeouts)
        out["time/reward_slowest_item"] = self.slowest_item_s
        return out

    @classmethod
    def concat(cls, parts: Sequence["RewardScores"]) -> "RewardScores":
        """One ``RewardScores`` for several calls: per-term metrics then cover every item of every call."""
        values: dict[str, list[float]] = {}
        for p in parts:
            for k, v in p.values.items():
                values.setdefault(k, []).extend(v)
        return cls(torch.cat([p.rewards for p in parts]) if parts else torch.zeros(0),
                   torch.cat([p.correct for p in parts]) if parts else torch.zeros(0), values,
                   sum(p.errors for p in parts), sum(p.timeouts for p in parts), sum(p.items for p in parts),
                   max((p.slowest_item_s for p in parts), default=0.0),
                   next((p.first_failure for p in parts if p.first_failure), ""),
                   [d for p in parts for d in p.details])


class LocalSandbox:
    """``python -m sandbox`` on a free loopback port, for the length of a run.

    Its output goes to ``log_path`` (a file: a pipe that nobody reads fills after ~500 requests'
    access-log lines and the service then blocks writing to it), and it stops by itself when this
    process is gone (``--parent-pid``), so a SIGKILLed trainer leaves no service running.
    """

    def __init__(self, max_concurrency: int = 0, start_timeout_s: float = 30.0, log_path: str | None = None):
        import socket
        import subprocess
        import sys
        import tempfile
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "sandbox", "--host", "127.0.0.1", "--port", str(port),
               "--parent-pid", str(os.getpid())]
        if max_concurrency:
            cmd += ["--max-concurrency", str(max_concurrency)]
        self._own_log = log_path is None  # a temporary log is removed at stop; a run's log stays
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="or1-sandbox-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        with open(log_path, "ab") as log_file:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + start_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the local sandbox service failed to start: {self._log_tail()}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).read()
                log.info("sandbox service running at %s (log: %s)", self.url, self.log_path)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the local sandbox service did not answer within {start_timeout_s}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
        if self._own_log:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass


def term_name(term: RewardTerm) -> str:
    return term.name or term.fn.rpartition(":")[2]


def route_terms(route: RewardRoute | RewardConfig) -> list[RewardTerm]:
    """A route's (or the default reward's) terms: ``terms`` when given, else ``fn`` alone with weight 1."""
    if route.terms:
        return list(route.terms)
    return [RewardTerm(fn=route.fn)] if route.fn else []


class RewardManager:
    def __init__(self, cfg: RewardConfig, pool: RewardPool | None = None, run_dir: str | None = None):
        """``run_dir``: where a locally started sandbox service logs (``sandbox.log``)."""
        self.cfg = cfg
        self.default_terms = route_terms(cfg)
        self.routes = {source: route_terms(route) for source, route in cfg.routes.items()}
        self._fns = {}  # term key (fn, kwargs) -> the loaded callable (its hooks are read from it)
        terms_by_key: dict[tuple[str, str], RewardTerm] = {}
        sections = [("reward", cfg), *((f"reward.routes.{source}", route) for source, route in cfg.routes.items())]
        for where, route in sections:
            terms = route_terms(route)
            if not terms:
                raise RewardConfigError(f"{where} names no reward function: set {where}.fn or {where}.terms")
            for i, t in enumerate(terms):
                field_name = f"{where}.terms[{i}].fn" if route.terms else f"{where}.fn"
                if t.fn.startswith(RM_PREFIX):
                    if t.fn[len(RM_PREFIX):] not in cfg.reward_models:
                        raise RewardConfigError(f"{field_name}={t.fn!r} names no model in reward.reward_models "
                                                f"(known: {sorted(cfg.reward_models)})")
                elif _term_key(t) not in self._fns:
                    try:
                        self._fns[_term_key(t)] = load_reward_fn(t.fn, dict(t.kwargs))
                    except RewardConfigError as exc:
                        raise RewardConfigError(f"{field_name}={t.fn!r}: {exc}") from None
                    terms_by_key[_term_key(t)] = t
        self.sandbox = None
        self.pool = None
        self._owns_pool = pool is None  # a pool passed in (tests share one) is its owner's to close
        self.reward_models: dict = {}  # name -> Ray actor handle, see start_reward_models
        self._warned: Counter = Counter()  # (term, kind) -> failures logged in full so far
        self._url_before = os.environ.get(code_reward.URL_ENV)  # restored by close()
        try:
            if cfg.sandbox.start_local:
                log_path = None
                if run_dir is not None:
                    os.makedirs(run_dir, exist_ok=True)
                    log_path = os.path.join(run_dir, "sandbox.log")
                self.sandbox = LocalSandbox(cfg.sandbox.max_concurrency, log_path=log_path)
                os.environ[code_reward.URL_ENV] = self.sandbox.url  # inherited by the pool's workers
            elif cfg.sandbox.url:
                os.environ[code_reward.URL_ENV] = cfg.sandbox.url
            for key, t in terms_by_key.items():
                check = reward_hook(self._fns[key], "startup_check")
                if check is not None:
                    try:
                        check(**dict(t.kwargs))
                    except Exception as exc:
                        raise RewardConfigError(f"reward function {t.fn!r} cannot run: {exc}") from None
            try:
                self.pool = pool or RewardPool(cfg.num_workers, cfg.timeout_s, cfg.memory_mb,
                                               functions=[(t.fn, dict(t.kwargs)) for t in terms_by_key.values()])
            except RewardWorkerStartError as exc:
                raise RewardConfigError(str(exc)) from None
        except BaseException:
            self.close()
            raise

    def start_reward_models(self) -> None:
        """Start one Ray actor per configured reward model (Ray must be initialised)."""
        import ray

        from or1.rewards.reward_model import RewardModelWorker

        for name, m in self.cfg.reward_models.items():
            self.reward_models[name] = ray.remote(num_cpus=m.num_cpus, num_gpus=m.num_gpus)(
                RewardModelWorker).remote(m.path, str(m.dtype), m.batch_sequences, m.max_length)
        for actor in self.reward_models.values():
            ray.get(actor.__ray_ready__.remote())

    def terms_for(self, row: dict) -> list[RewardTerm]:
        """The route of the row's data_source, else of its ability (verl's math | code), else the default."""
        terms = self.routes.get(row.get("data_source", ""))
        if terms is None and "ability" in row:
            terms = self.routes.get(row["ability"])
        return self.default_terms if terms is None else terms

    def deadline_s(self, term: RewardTerm, row: dict) -> float:
        """The item's deadline: the function's ``deadline_s`` hook if it has one, else reward.timeout_s."""
        hook = reward_hook(self._fns[_term_key(term)], "deadline_s")
        if hook is None:
            return self.cfg.timeout_s
        try:
            return float(hook(row, **dict(term.kwargs)))
        except Exception:  # a malformed row: the function itself will report it as that item's error
            return self.cfg.timeout_s

    def check_on_rows(self, rows: Sequence[dict], where: Sequence[str]) -> None:
        """Try every function term once, on an empty response to a real row routed to it (``where[i]``
        names row i, e.g. ``train.jsonl:3``), and refuse the run if it raises, times out or returns
        something that is not a score. Terms no row is routed to are not tried."""
        probes: list[tuple[RewardTerm, int]] = []
        for source, terms in [(None, self.default_terms), *self.routes.items()]:
            index = next((i for i, row in enumerate(rows) if self.terms_for(row) is terms), None)
            if index is None:
                if source is not None:
                    log.info("reward.routes.%s: no row has data_source or ability %r", source, source)
                continue
            probes += [(t, index) for t in terms if not t.fn.startswith(RM_PREFIX)]
        results = self.pool.score_batch([(t.fn, dict(t.kwargs), "", rows[i]) for t, i in probes],
                                        [self.deadline_s(t, rows[i]) for t, i in probes])
        for (t, i), res in zip(probes, results):
            what = f"reward term {term_name(t)!r} ({t.fn}) on an empty response to row {where[i]}"
            if res.status != "ok":
                raise RewardConfigError(f"{what}: {res.status}: {res.error}. A reward function must return a score "
                                        f"for any response, an empty one included")
            try:
                reward_value(res.value)
            except ValueError as exc:
                raise RewardConfigError(f"{what} returned an unusable value: {exc}. Return a number, or a dict "
                                        f"with a numeric 'score' (and numeric extras)") from None

    def score(self, responses: list[str], rows: list[dict]) -> RewardScores:
        """Every (response, term) pair goes to the pool at once."""
        return self.score_groups(responses, rows, [len(rows)])[0]

    def score_groups(self, responses: list[str], rows: list[dict], sizes: Sequence[int]) -> list[RewardScores]:
        """``score`` for consecutive groups of ``sizes`` responses, submitted together, answered per
        group: concatenating the groups' scores in any grouping gives what one ``score`` call over
        the same responses gives (the streaming scorer relies on it)."""
        if sum(sizes) != len(rows):
            raise ValueError(f"group sizes {list(sizes)} do not add up to {len(rows)} responses")
        plan = [(i, t) for i, row in enumerate(rows) for t in self.terms_for(row)]
        fn_plan = [(k, i, t) for k, (i, t) in enumerate(plan) if not t.fn.startswith(RM_PREFIX)]
        pending = self.pool.submit_batch([(t.fn, dict(t.kwargs), responses[i], rows[i]) for _, i, t in fn_plan],
                                         [self.deadline_s(t, rows[i]) for _, i, t in fn_plan])
        results: list[ItemResult | None] = [None] * len(plan)
        rm_results = self._score_with_models(plan, responses, rows)  # runs while the pool works
        for (k, _, _), res in zip(fn_plan, pending.result()):
            results[k] = res
        for k, res in rm_results.items():
            results[k] = res
        suppressed: Counter = Counter()  # (term, kind) -> failures in this call not logged in full
        groups, start, k = [], 0, 0
        for size in sizes:
            end = k
            while end < len(plan) and plan[end][0] < start + size:
                end += 1
            groups.append(self._collect([(i - start, t) for i, t in plan[k:end]], results[k:end], size, suppressed))
            start, k = start + size, end
        for (name, kind), count in suppressed.items():
            log.warning("reward %s: %d more %s in this batch of %d items", name, count, kind, len(plan))
        return groups

    def _collect(self, plan: list[tuple[int, RewardTerm]], results: list[ItemResult], size: int,
                 suppressed: Counter) -> RewardScores:
        """One group's ``RewardScores`` from its (response, term) items and their results."""
        rewards = np.zeros(size)
        correct: list[float | None] = [None] * size
        primary_score: dict[int, float] = {}
        out = RewardScores(torch.zeros(0), torch.zeros(0), items=len(plan),
                           slowest_item_s=max((r.seconds for r in results), default=0.0),
                           details=[{} for _ in range(size)])
        for (i, t), res in zip(plan, results):
            name = term_name(t)
            value, extras = self.cfg.fallback_score, {}
            kind, message = res.status, res.error
            if res.status == "ok":
                try:
                    value, extras = reward_value(res.value)
                except ValueError as exc:
                    kind, message, value = "error", f"unusable value: {exc}", self.cfg.fallback_score
            if kind != "ok":
                out.errors += kind == "error"
                out.timeouts += kind == "timeout"
                out.first_failure = out.first_failure or f"reward {name} ({t.fn}): {kind}: {message}"
                if self._warned[(name, kind)] < WARN_IN_FULL:
                    self._warned[(name, kind)] += 1
                    last = self._warned[(name, kind)] == WARN_IN_FULL
                    log.warning("reward %s: %s on a sample (%s); scored %s%s", name, kind, message,
                                self.cfg.fallback_score, " (further ones are counted, not shown)" if last else "")
                else:
                    suppressed[(name, kind)] += 1
            rewards[i] += t.weight * value
            primary_score.setdefault(i, value)
            if "acc" in extras and correct[i] is None:
                correct[i] = float(extras["acc"])
            out.values.setdefault(name, []).append(value)
            out.details[i][name] = value
            if kind != "ok":
                out.details[i][f"{name}/failed"] = kind
            for key, v in extras.items():
                out.values.setdefault(f"{name}/{key}", []).append(v)
                out.details[i][f"{name}/{key}"] = v
        # correct: the first term reporting "acc" decides; otherwise the first term's score >= 1
        acc = [c if c is not None else float(primary_score.get(i, 0.0) >= 1.0) for i, c in enumerate(correct)]
        out.rewards = torch.tensor(rewards, dtype=torch.float32)
        out.correct = torch.tensor(acc, dtype=torch.float32)
        return out

    def _score_with_models(self, plan, responses: list[str], rows: list[dict]) -> dict[int, ItemResult]:
        """Batched reward-model scores for the plan's ``rm:`` terms, keyed by plan position."""
        by_model: dict[str, list[tuple[int, int]]] = {}
        for k, (i, t) in enumerate(plan):
            if t.fn.startswith(RM_PREFIX):
                by_model.setdefault(t.fn[len(RM_PREFIX):], []).append((k, i))
        if not by_model:
            return {}
        import ray

        out: dict[int, ItemResult] = {}
        calls = {}
        for name, pairs in by_model.items():
            if name not in self.reward_models:
                raise RuntimeError("reward models are not started; call start_reward_models() first")
            key = self.cfg.reward_models[name].prompt_key
            calls[name] = self.reward_models[name].score.remote([prompt_text(rows[i].get(key, "")) for _, i in pairs],
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
        if self.pool is not None and self._owns_pool:
            self.pool.close()
        self.pool = None
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None
        if self._url_before is None:
            os.environ.pop(code_reward.URL_ENV, None)
        else:
            os.environ[code_reward.URL_ENV] = self._url_before
        if self.reward_models:
            import ray

            for actor in self.reward_models.values():
                ray.kill(actor)
            self.reward_models = {}


def _term_key(term: RewardTerm) -> tuple[str, str]:
    return term.fn, json.dumps(dict(term.kwargs), sort_keys=True, default=str)

