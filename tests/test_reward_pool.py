"""The reward pool and manager: hard deadlines, failures that never kill a step, routing, weighting."""

import textwrap
import time

import pytest

from or1.config import RewardConfig, RewardTerm
from or1.rewards.loader import RewardConfigError
from or1.rewards.manager import RewardManager
from or1.rewards.pool import RewardPool

MATH = "or1.rewards.math:score"
PATHOLOGICAL = [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{" + "+".join(f"x_{{{i}}}" for i in range(20000)) + "}",  # a 100k-character answer
    "\\boxed{" + "\\frac{" * 300 + "1" + "}{2}" * 300 + "}",  # deeply nested LaTeX
    "\\boxed{10^{10^{10^{10}}} - 10^{10^{10^{10}}}}",
]


@pytest.fixture(scope="module")
def pool():
    with RewardPool(num_workers=2, timeout_s=2.0) as p:
        yield p


def test_pathological_inputs_are_wrong_within_the_deadline_and_the_pool_recovers(pool):
    items = [(MATH, {}, r, {"answer": "3"}) for r in PATHOLOGICAL] + [(MATH, {}, "\\boxed{3}", {"answer": "3"})]
    t0 = time.time()
    results = pool.score_batch(items)
    elapsed = time.time() - t0
    for r in results[:-1]:
        assert r.status in ("ok", "timeout") and (r.value in (None, 0.0)), r
        assert r.seconds < 2.0 + 1.0
    assert results[-1].status == "ok" and results[-1].value == 1.0
    assert elapsed < 4 * 3.0  # 2 workers, at most 2 deadlines each, plus restarts
    # the replaced workers score normally afterwards
    assert [r.value for r in pool.score_batch([(MATH, {}, "\\boxed{0.5}", {"answer": "\\frac{1}{2}"})] * 4)] == [1.0] * 4


def test_crash_and_memory_bomb_are_errors_not_deaths(tmp_path, pool):
    f = tmp_path / "evil.py"
    f.write_text(textwrap.dedent("""
        import os
        def crash(response, sample):
            os._exit(3)
        def hog(response, sample):
            return len(bytearray(10 ** 11))
        def raises(response, sample):
            raise RuntimeError("boom")
    """))
    results = pool.score_batch([(f"{f}:crash", {}, "", {}), (f"{f}:hog", {}, "", {}), (f"{f}:raises", {}, "", {})])
    assert [r.status for r in results] == ["error", "error", "error"]
    assert "died" in results[0].error and "MemoryError" in results[1].error and "boom" in results[2].error
    assert pool.score_batch([(MATH, {}, "7", {"answer": "7"})])[0].value == 1.0


def test_async_submit_overlaps(pool):
    future = pool.submit_batch([(MATH, {}, "\\boxed{2}", {"answer": "2"})] * 8)
    assert [r.value for r in future.result(timeout=30)] == [1.0] * 8


def test_manager_routes_weights_and_falls_back(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(textwrap.dedent("""
        def shout(response, sample, factor=1.0):
            if "!" not in response:
                raise ValueError("no exclamation")
            return {"score": factor * response.count("!"), "bangs": response.count("!")}
    """))
    cfg = RewardConfig(
        terms=[RewardTerm(fn=MATH, weight=1.0, name="correct"),
               RewardTerm(fn="or1.rewards.math:format_score", weight=0.1, name="format")],
        routes={"shouting": [RewardTerm(fn=f"{f}:shout", kwargs={"factor": 0.5})]},
        fallback_score=-1.0, timeout_s=5.0, num_workers=1)
    manager = RewardManager(cfg)
    try:
        rows = [{"answer": "4", "data_source": "math"}, {"answer": "4", "data_source": "math"},
                {"data_source": "shouting"}, {"data_source": "shouting"}]
        out = manager.score(["\\boxed{4}", "4", "hey!!", "quiet"], rows)
    finally:
        manager.close()
    # 1 + 0.1 * format(1) ; 1 + 0.1 * format(0) ; 0.5 * 2 ; fallback -1
    assert out.rewards.tolist() == pytest.approx([1.1, 1.0, 1.0, -1.0])
    assert out.correct.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert out.metrics["reward/errors"] == 1.0 and out.metrics["reward/shout/bangs"] == 2.0
    assert out.metrics["reward/format"] == pytest.approx(0.5)


def test_manager_rejects_bad_terms_at_construction(tmp_path):
    with pytest.raises(RewardConfigError):
        RewardManager(RewardConfig(routes={"x": [RewardTerm(fn="or1.rewards.math:nope")]}), pool=object())
    with pytest.raises(RewardConfigError, match="must accept"):
        RewardManager(RewardConfig(terms=[RewardTerm(fn=MATH, kwargs={"colour": "red"})]), pool=object())


@pytest.mark.slow
def test_pathological_inputs_inside_a_ray_actor(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=1)
    class Scorer:
        def run(self, items):
            with RewardPool(num_workers=1, timeout_s=2.0) as p:
                t0 = time.time()
                results = p.score_batch(items)
                return [(r.status, r.value) for r in results], time.time() - t0

    items = [(MATH, {}, r, {"answer": "3"}) for r in PATHOLOGICAL[:2]] + [(MATH, {}, "\\boxed{3}", {"answer": "3"})]
    results, elapsed = ray.get(Scorer.remote().run.remote(items), timeout=120)
    assert results[-1] == ("ok", 1.0)
    assert all(status in ("ok", "timeout") and value in (None, 0.0) for status, value in results[:-1])
    assert elapsed < 2 * 3.0 + 10  # two deadlines plus worker start-ups
