"""Math-verifier throughput: checks per second through the reward pool on a realistic mixed batch.

    .venv/bin/python benchmarks/rewards.py [--workers 2] [--n 2000] [--out benchmarks/results/rewards.json]

The batch mixes what RL rollouts produce: long reasoning followed by a boxed answer (right or
wrong), fractions vs decimals, LaTeX vs plain, sets/intervals, unboxed answers, and a few
pathological answers that hit the deadline. Side by side, the same items are scored in-process
on the main thread (math-verify's own timeouts, no isolation) for the overhead ratio.
"""

from __future__ import annotations

from report import report  # benchmarks/report.py (scripts run from this folder)

import argparse
import os
import random
import time

CASES = [
    ("\\boxed{42}", "42"), ("\\boxed{41}", "42"), ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}"), ("\\boxed{(1, 3]}", "(1,3]"), ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}"),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2"), ("The answer is 17.", "17"), ("\\boxed{3\\pi}", "3\\pi"),
    ("\\boxed{10\\%}", "10"), ("\\boxed{2^{10}}", "1024"), ("\\boxed{-7}", "7"), ("no answer here", "5"),
]
PATHOLOGICAL = [("\\boxed{9^{9^{9^{9}}}}", "3")]


def make_batch(n: int, seed: int = 0, pathological_every: int = 500) -> list[tuple[str, str, bool]]:
    """(response, gold answer, is_pathological) triples."""
    rng = random.Random(seed)
    reasoning = "Let us think step by step. " * 40  # ~1k characters of reasoning before the answer
    batch = []
    for i in range(n):
        bad = bool(pathological_every) and i % pathological_every == 1
        resp, gold = PATHOLOGICAL[0] if bad else rng.choice(CASES)
        batch.append((f"<think>{reasoning}</think> {resp}", gold, bad))
    return batch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--out", default="benchmarks/results/rewards.json")
    a = p.parse_args()

    from or1.rewards.math import score
    from or1.rewards.pool import RewardPool

    batch = make_batch(a.n)
    clean = [(r, g) for r, g, bad in batch if not bad]  # in-process there is no way to stop the others
    mixed_items = [("or1.rewards.math:score", {}, r, {"answer": g}) for r, g, _ in batch]
    clean_items = [("or1.rewards.math:score", {}, r, {"answer": g}) for r, g in clean]
    with RewardPool(a.workers, a.timeout) as pool:
        pool.score_batch(clean_items[:8])  # warm the workers (imports)
        t0 = time.perf_counter()
        pool.score_batch(clean_items)
        pool_clean_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = pool.score_batch(mixed_items)
        pool_mixed_s = time.perf_counter() - t0
    statuses = {s: sum(r.status == s for r in results) for s in ("ok", "timeout", "error")}

    t0 = time.perf_counter()
    for r, g in clean:
        score(r, {"answer": g})
    inproc_s = time.perf_counter() - t0

    row = {
        "items_clean": len(clean), "items_mixed": a.n, "workers": a.workers, "cores": os.cpu_count(),
        "timeout_s": a.timeout,
        "pool_clean_checks_per_s": len(clean) / pool_clean_s,
        "inprocess_clean_checks_per_s": len(clean) / inproc_s,
        "pool_vs_inprocess_ratio": (len(clean) / pool_clean_s) / (len(clean) / inproc_s),
        "pool_mixed_checks_per_s": a.n / pool_mixed_s,
        "mixed_statuses": statuses,
    }
    report(row, a.out)


if __name__ == "__main__":
    main()
