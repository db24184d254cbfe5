"""A pool of killable worker processes that run reward functions under a hard deadline.

Why processes: math-verify bounds its work with SIGALRM, which works only on a main thread and
cannot interrupt long C-level work (sympy on ``9^{9^{9^{9}}}``); a thread cannot be killed. Each
item here runs in a worker process; one that overruns its deadline (or dies, or exceeds its
memory cap) is killed and replaced, and the item gets status ``timeout`` / ``error``: the
training step goes on.

A worker counts as ready only once it has imported every configured reward function and run its
``warmup`` hook (math-verify and sympy take seconds to import): an item's deadline measures the
item, never a cold start, in the first workers and in every replacement alike.

``score_batch`` blocks; ``submit_batch`` returns a ``Future`` so scoring can overlap generation.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Sequence

WORKER_ENV = "OR1_REWARD_WORKER"  # set inside workers: reward functions may rely on the pool's deadline

Item = tuple[str, dict, str, dict]  # (fn spec, kwargs, response, sample)


@dataclass
class ItemResult:
    status: str  # ok | timeout | error
    value: Any = None  # the function's return value when ok
    error: str = ""  # what went wrong otherwise
    seconds: float = 0.0


class RewardWorkerStartError(RuntimeError):
    """A worker could not load or warm up a reward function."""


def _key(spec: str, kwargs: dict) -> str:
    return spec + json.dumps(kwargs, sort_keys=True, default=str)


def _worker_main(conn, memory_mb: int, functions: list[tuple[str, dict]]) -> None:
    os.environ[WORKER_ENV] = "1"
    if memory_mb > 0:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import logging

    from or1.rewards.loader import load_reward_fn, warm_up

    # math-verify warns on every call that its own timeouts are off; here the pool's deadline is the bound.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    fns: dict[str, Any] = {}
    for spec, kwargs in functions:  # load and warm before counting as ready
        try:
            fns[_key(spec, kwargs)] = warm_up(load_reward_fn(spec, kwargs))
        except BaseException as exc:  # noqa: BLE001 - reported to the pool, which refuses to start
            conn.send(("failed", f"{spec}: {type(exc).__name__}: {str(exc)[:300]}"))
            return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        spec, kwargs, response, sample = msg
        t0 = time.perf_counter()
        try:
            key = _key(spec, kwargs)
            fn = fns.get(key) or fns.setdefault(key, load_reward_fn(spec, kwargs))
            out = ItemResult("ok", fn(response, sample))
        except BaseException as exc:  # noqa: BLE001 - any failure of user code is that item's error
            out = ItemResult("error", error=f"{type(exc).__name__}: {str(exc)[:300]}")
        out.seconds = time.perf_counter() - t0
        try:
            conn.send(("done", out))
        except Exception as exc:  # an unpicklable return value
            conn.send(("done", ItemResult("error", error=f"result not transferable: {exc!r}")))


class _Worker:
    def __init__(self, ctx, memory_mb: int, functions: list[tuple[str, dict]]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, memory_mb, functions), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.item: int | None = None
        self.deadline = 0.0
        self.started = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class RewardPool:
    """``num_workers`` processes; each item gets its deadline (default ``timeout_s``) of wall clock
    from dispatch to a ready worker.

    ``functions`` are the ``(spec, kwargs)`` pairs every worker loads and warms up before it takes
    items; the constructor waits until all workers are ready (at most ``ready_timeout_s``) and
    raises ``RewardWorkerStartError`` naming the function if one cannot be loaded there.
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 10.0, memory_mb: int = 4096,
                 functions: Sequence[tuple[str, dict]] = (), start_method: str = "spawn",
                 ready_timeout_s: float = 300.0):
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.functions = [(spec, dict(kwargs)) for spec, kwargs in functions]
        self._ctx = mp.get_context(start_method)
        self._workers = [self._new_worker() for _ in range(num_workers)]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="or1-reward")
        self.replaced = 0  # workers killed and replaced so far
        try:
            self._await_ready(ready_timeout_s)
        except BaseException:
            self.close()
            raise

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self.memory_mb, self.functions)

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(w.ready for w in self._workers):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RewardWorkerStartError(f"reward workers did not load their functions within {timeout_s:.0f}s")
            for conn in wait([w.conn for w in self._workers if not w.ready], timeout=left):
                self._handle_start_message(next(w for w in self._workers if w.conn is conn))

    def _handle_start_message(self, w: _Worker) -> None:
        try:
            kind, payload = w.conn.recv()
        except (EOFError, OSError):
            raise RewardWorkerStartError("a reward worker died while loading the reward functions "
                                         f"(memory cap reward.memory_mb={self.memory_mb}?)") from None
        if kind == "failed":
            raise RewardWorkerStartError(f"a reward worker could not load {payload}")
        w.ready = True

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = self._new_worker()
        self.replaced += 1

    def score_batch(self, items: Sequence[Item], deadlines: Sequence[float | None] | None = None) -> list[ItemResult]:
        """Run ``fn(response, sample, **kwargs)`` for each ``(fn_spec, kwargs, response, sample)``;
        results in order. ``deadlines[i]`` (seconds, None: ``timeout_s``) bounds item i."""
        results: list[ItemResult | None] = [None] * len(items)
        limits = [d if d is not None else self.timeout_s for d in (deadlines or [None] * len(items))]
        pending = deque(range(len(items)))
        while pending or any(w.item is not None for w in self._workers):
            now = time.monotonic()
            for w in self._workers:
                if w.ready and w.item is None and pending:
                    i = pending.popleft()
                    w.conn.send(items[i])
                    w.item, w.started, w.deadline = i, now, now + limits[i]
            busy = [w for w in self._workers if w.item is not None]
            waiting = [w.conn for w in self._workers if not w.ready or w.item is not None]
            timeout = max(0.0, min((w.deadline for w in busy), default=now + 1.0) - now)
            for conn in wait(waiting, timeout=timeout):
                w = next(x for x in self._workers if x.conn is conn)
                if not w.ready:  # a replacement finishing its warm-up
                    try:
                        self._handle_start_message(w)
                    except RewardWorkerStartError:
                        self._replace(self._workers.index(w))
                        raise
                    continue
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):  # the worker died (crash, OOM kill)
                    if w.item is not None:
                        results[w.item] = ItemResult("error", error="reward worker died",
                                                     seconds=time.monotonic() - w.started)
                    w.item = None
                    self._replace(self._workers.index(w))
                    continue
                results[w.item] = payload
                w.item = None
            now = time.monotonic()
            for idx, w in enumerate(self._workers):
                if w.item is not None and now >= w.deadline:
                    results[w.item] = ItemResult("timeout", error=f"exceeded {limits[w.item]:g}s",
                                                 seconds=now - w.started)
                    w.item = None
                    self._replace(idx)
        return results  # type: ignore[return-value]

    def submit_batch(self, items: Sequence[Item], deadlines: Sequence[float | None] | None = None) -> Future:
        """Score asynchronously (e.g. while vLLM keeps generating); ``.result()`` gives the list."""
        return self._executor.submit(self.score_batch, items, deadlines)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            w.proc.join(timeout=2)
            w.kill()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
