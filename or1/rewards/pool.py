"""A pool of killable worker processes that run reward functions under a hard deadline.

Why processes: math-verify bounds its work with SIGALRM, which works only on a main thread and
cannot interrupt long C-level work (sympy on ``9^{9^{9^{9}}}``); a thread cannot be killed. Each
item here runs in a worker process; one that overruns its deadline (or dies, or exceeds its
memory cap) is killed and replaced, and the item gets status ``timeout`` / ``error``: the
training step goes on.

``score_batch`` blocks; ``submit_batch`` returns a ``Future`` so scoring can overlap generation.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

WORKER_ENV = "OR1_REWARD_WORKER"  # set inside workers: reward functions may rely on the pool's deadline


@dataclass
class ItemResult:
    status: str  # ok | timeout | error
    value: Any = None  # the function's return value when ok
    error: str = ""  # what went wrong otherwise
    seconds: float = 0.0


def _worker_main(conn, memory_mb: int) -> None:
    os.environ[WORKER_ENV] = "1"
    if memory_mb > 0:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import logging

    from or1.rewards.loader import load_reward_fn

    # math-verify warns on every call that its own timeouts are off; here the pool's deadline is the bound.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    fns: dict[str, Any] = {}
    conn.send(("ready", None))
    import json
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
            key = spec + json.dumps(kwargs, sort_keys=True)
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
    def __init__(self, ctx, memory_mb: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, memory_mb), daemon=True)
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
    """``num_workers`` processes; each item gets ``timeout_s`` of wall clock from dispatch."""

    def __init__(self, num_workers: int = 2, timeout_s: float = 10.0, memory_mb: int = 4096,
                 start_method: str = "spawn"):
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._ctx = mp.get_context(start_method)
        self._workers = [_Worker(self._ctx, memory_mb) for _ in range(num_workers)]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="or1-reward")
        self.replaced = 0  # workers killed and replaced so far

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = _Worker(self._ctx, self.memory_mb)
        self.replaced += 1

    def score_batch(self, items: list[tuple[str, dict, str, dict]]) -> list[ItemResult]:
        """Run ``fn(response, sample, **kwargs)`` for each ``(fn_spec, kwargs, response, sample)``;
        results in order."""
        results: list[ItemResult | None] = [None] * len(items)
        pending = deque(range(len(items)))
        while pending or any(w.item is not None for w in self._workers):
            now = time.monotonic()
            for w in self._workers:
                if w.ready and w.item is None and pending:
                    i = pending.popleft()
                    w.conn.send(items[i])
                    w.item, w.started, w.deadline = i, now, now + self.timeout_s
            busy = [w for w in self._workers if w.item is not None]
            waiting = [w.conn for w in self._workers if not w.ready or w.item is not None]
            timeout = max(0.0, min((w.deadline for w in busy), default=now + 1.0) - now)
            for conn in wait(waiting, timeout=timeout):
                w = next(x for x in self._workers if x.conn is conn)
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):  # the worker died (crash, OOM kill)
                    if w.item is not None:
                        results[w.item] = ItemResult("error", error="reward worker died",
                                                     seconds=time.monotonic() - w.started)
                    w.item = None
                    self._replace(self._workers.index(w))
                    continue
                if kind == "ready":
                    w.ready = True
                else:
                    results[w.item] = payload
                    w.item = None
            now = time.monotonic()
            for idx, w in enumerate(self._workers):
                if w.item is not None and now >= w.deadline:
                    results[w.item] = ItemResult("timeout", error=f"exceeded {self.timeout_s}s",
                                                 seconds=now - w.started)
                    w.item = None
                    self._replace(idx)
        return results  # type: ignore[return-value]

    def submit_batch(self, items: list[tuple[str, dict, str, dict]]) -> Future:
        """Score asynchronously (e.g. while vLLM keeps generating); ``.result()`` gives the list."""
        return self._executor.submit(self.score_batch, items)

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
