"""The reward pool and manager: hard deadlines, warm workers, failures that never kill a step,
routing, weighting, start-up checks. No assertion here depends on how loaded the machine is:
deadlines are either far above what an item needs or far below what a hang takes."""

import logging
import textwrap

import pytest
import torch

from or1.config import RewardConfig, RewardRoute, RewardTerm
from or1.rewards.loader import RewardConfigError
from or1.rewards.manager import RewardManager, RewardScores
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
    with RewardPool(num_workers=2, timeout_s=2.0, functions=[(MATH, {})]) as p:
        yield p


def test_pathological_inputs_are_wrong_within_the_deadline_and_the_pool_recovers(pool):
    items = [(MATH, {}, r, {"answer": "3"}) for r in PATHOLOGICAL] + [(MATH, {}, "\\boxed{3}", {"answer": "3"})]
    results = pool.score_batch(items)
    for r in results[:-1]:
        assert r.status in ("ok", "timeout") and (r.value in (None, 0.0)), r
    assert results[-1].status == "ok" and results[-1].value == 1.0
    # the replaced workers score normally afterwards
    half = (MATH, {}, "\\boxed{0.5}", {"answer": "\\frac{1}{2}"})
    assert [r.value for r in pool.score_batch([half] * 4)] == [1.0] * 4


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
    assert [r.value for r in future.result(timeout=60)] == [1.0] * 8


SLOW_IMPORT = """
import time
time.sleep({seconds})  # a heavy import (math-verify and sympy take ~1-2 s; this one takes longer)
WARMED = []

def score(response, sample):
    return 1.0

def hang(response, sample):
    while True:
        pass

def _warm():
    WARMED.append(True)

def warmed(response, sample):
    return float(bool(WARMED))

warmed.warmup = _warm
"""


def test_workers_are_ready_only_once_their_functions_are_loaded_and_warm(tmp_path):
    """An item's deadline must measure the item, never the import: a 3 s import with a 1.5 s deadline
    timed every first item out (and every item given to a replacement worker) before."""
    module = tmp_path / "slow.py"
    module.write_text(SLOW_IMPORT.format(seconds=3))
    functions = [(f"{module}:score", {}), (f"{module}:hang", {}), (f"{module}:warmed", {})]
    with RewardPool(num_workers=1, timeout_s=1.5, functions=functions) as p:
        first = p.score_batch([(f"{module}:score", {}, "", {})] * 3 + [(f"{module}:warmed", {}, "", {})])
        assert [r.status for r in first] == ["ok"] * 4
        assert first[-1].value == 1.0  # the warmup hook ran in the worker before it took items
        # a hang kills the only worker; its replacement imports for 3 s before taking the next items
        after = p.score_batch([(f"{module}:hang", {}, "", {})] + [(f"{module}:score", {}, "", {})] * 3)
        assert [r.status for r in after] == ["timeout", "ok", "ok", "ok"]
        assert p.replaced == 1


def test_per_item_deadlines(tmp_path):
    module = tmp_path / "nap.py"
    module.write_text("import time\ndef nap(response, sample):\n    time.sleep(float(response))\n    return 1.0\n")
    with RewardPool(num_workers=1, timeout_s=0.5, functions=[(f"{module}:nap", {})]) as p:
        results = p.score_batch([(f"{module}:nap", {}, "1.5", {})] * 2, deadlines=[30.0, None])
    assert [r.status for r in results] == ["ok", "timeout"]  # its own 30 s deadline; the default 0.5 s


def test_a_function_that_cannot_load_in_the_workers_is_refused_at_start(tmp_path):
    module = tmp_path / "broken_warmup.py"
    module.write_text("def score(r, s):\n    return 1.0\ndef _w():\n    raise ImportError('no GPU here')\n"
                      "score.warmup = _w\n")
    with pytest.raises(RewardConfigError, match="no GPU here"):
        RewardManager(RewardConfig(fn=f"{module}:score", num_workers=1))


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
        routes={"shouting": RewardRoute(terms=[RewardTerm(fn=f"{f}:shout", kwargs={"factor": 0.5})])},
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
    metrics = out.metrics()
    assert metrics["reward/errors"] == 1.0 and metrics["reward/shout/bangs"] == 2.0
    assert metrics["reward/format"] == pytest.approx(0.5)
    assert out.items == 6 and out.failed == 1 and "no exclamation" in out.first_failure
    assert out.details == [{"correct": 1.0, "format": 1.0}, {"correct": 1.0, "format": 0.0},
                           {"shout": 1.0, "shout/bangs": 2}, {"shout": -1.0, "shout/failed": "error"}]


def test_rows_without_a_data_source_route_are_routed_by_their_ability(tmp_path):
    (tmp_path / "mine.py").write_text("def judge(response, sample):\n    return 0.0\n")
    judge = f"{tmp_path / 'mine.py'}:judge"
    cfg = RewardConfig(fn=MATH, routes={"code": RewardRoute(fn=judge),
                                        "LeetCode": RewardRoute(fn="or1.rewards.math:format_score")})
    manager = RewardManager(cfg, pool=object())
    fn_of = lambda row: [t.fn for t in manager.terms_for(row)]
    assert fn_of({"data_source": "TACO", "ability": "code"}) == [judge]
    assert fn_of({"data_source": "LeetCode", "ability": "code"}) == ["or1.rewards.math:format_score"]  # source first
    assert fn_of({"data_source": "NuminaMath", "ability": "math"}) == [MATH]
    assert fn_of({"data_source": ""}) == [MATH]


def test_manager_rejects_bad_terms_at_construction(tmp_path):
    with pytest.raises(RewardConfigError, match=r"reward.routes.x.fn='or1.rewards.math:nope'"):
        RewardManager(RewardConfig(routes={"x": RewardRoute(fn="or1.rewards.math:nope")}), pool=object())
    with pytest.raises(RewardConfigError, match=r"reward.terms\[0\].fn=.*must accept"):
        RewardManager(RewardConfig(terms=[RewardTerm(fn=MATH, kwargs={"colour": "red"})]), pool=object())
    with pytest.raises(RewardConfigError, match="reward.routes.code names no reward function"):
        RewardManager(RewardConfig(routes={"code": RewardRoute()}), pool=object())


VALUES = """
def word(response, sample):
    return "correct"
def no_score(response, sample):
    return {"acc": 1.0}
def needs_tests(response, sample):
    return float(len(sample["tests"]))
def fine(response, sample):
    return {"score": 1.0, "acc": 1.0}
"""


@pytest.mark.parametrize("fn, message", [
    ("word", r"returned an unusable value: the reward must be a number, got str 'correct'"),
    ("no_score", r"must carry 'score'"),
    ("needs_tests", r"KeyError: 'tests'"),
])
def test_each_term_is_tried_on_a_real_row_at_start_up(tmp_path, fn, message):
    module = tmp_path / "values.py"
    module.write_text(VALUES)
    manager = RewardManager(RewardConfig(fn=f"{module}:fine", routes={"mine": RewardRoute(fn=f"{module}:{fn}")},
                                         num_workers=1))
    try:
        rows = [{"prompt": "p", "data_source": "math"}, {"prompt": "q", "data_source": "mine"}]
        with pytest.raises(RewardConfigError, match=message) as err:
            manager.check_on_rows(rows, ["train.jsonl:1", "train.jsonl:2"])
        assert "train.jsonl:2" in str(err.value)  # the row routed to the term, by file and line
        manager.check_on_rows(rows[:1], ["train.jsonl:1"])  # no row of "mine": only the default is tried
    finally:
        manager.close()


def test_unusable_values_are_errors_whose_warnings_are_capped(tmp_path, caplog):
    module = tmp_path / "values.py"
    module.write_text(VALUES)
    manager = RewardManager(RewardConfig(fn=f"{module}:word", num_workers=1))
    try:
        with caplog.at_level(logging.WARNING, logger="or1"):
            scores = [manager.score(["x"] * 40, [{"prompt": "p"}] * 40) for _ in range(3)]
    finally:
        manager.close()
    assert all(s.errors == 40 and s.failed == s.items == 40 for s in scores)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 + 3  # 3 failures in full over the run, then one count per call
    assert sum("unusable value" in line for line in lines) == 3
    assert lines[3:] == [f"reward word: {n} more error in this batch of 40 items" for n in (37, 40, 40)]


def test_scores_of_several_rounds_report_every_item():
    a = RewardScores(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]), values={"score": [1.0, 0.0]},
                     errors=1, items=2, first_failure="x")
    b = RewardScores(torch.ones(4), torch.ones(4), values={"score": [1.0] * 4}, timeouts=2, items=4,
                     slowest_item_s=3.0)
    both = RewardScores.concat([a, b])
    m = both.metrics()
    assert m["reward/score"] == pytest.approx(5 / 6)  # every item of both rounds, not the first round's 0.5
    assert (m["reward/errors"], m["reward/timeouts"], m["time/reward_slowest_item"]) == (1.0, 2.0, 3.0)
    assert both.items == 6 and both.first_failure == "x" and both.rewards.tolist() == [1, 0, 1, 1, 1, 1]


@pytest.mark.slow
def test_pathological_inputs_inside_a_ray_actor(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=1)
    class Scorer:
        def run(self, items):
            with RewardPool(num_workers=1, timeout_s=2.0, functions=[(MATH, {})]) as p:
                return [(r.status, r.value) for r in p.score_batch(items)]

    items = [(MATH, {}, r, {"answer": "3"}) for r in PATHOLOGICAL[:2]] + [(MATH, {}, "\\boxed{3}", {"answer": "3"})]
    results = ray.get(Scorer.remote().run.remote(items), timeout=120)
    assert results[-1] == ("ok", 1.0)
    assert all(status in ("ok", "timeout") and value in (None, 0.0) for status, value in results[:-1])


class StreamingEngines:
    """Rollouts that hand prompts out as they "finish": in reverse order, two prompts per chunk."""

    def __init__(self, answers_of: dict[int, list[str]]):
        self.answers_of = answers_of

    def generate(self, prompt_token_ids, n, temperature, top_p, max_tokens, seeds):
        return sorted((s for c in self.generate_stream(prompt_token_ids, n, temperature, top_p, max_tokens, seeds)
                       for s in c), key=lambda s: s.prompt_index)

    def generate_stream(self, prompt_token_ids, n, temperature, top_p, max_tokens, seeds):
        from or1.workers.rollout import Sample

        order = list(range(len(prompt_token_ids)))[::-1]
        for start in range(0, len(order), 2):
            yield [Sample(g, [ord(c) for c in text], [0.0] * len(text), False)
                   for g in order[start:start + 2] for text in self.answers_of[prompt_token_ids[g][0]]]


def test_streaming_scoring_gives_the_batch_scores_in_prompt_order():
    """Scoring chunks as the engines finish them (out of order) gives what scoring the whole batch gives."""
    from or1.data.dataset import PromptDataset
    from or1.trainer import generate_and_score
    from tests.fakes import CharTokenizer

    answers = {0: ["\\boxed{4}", "4", "\\boxed{5}"], 1: ["\\boxed{7}", "seven", "\\boxed{7}"],
               2: ["\\boxed{10}", "\\boxed{1}", "x"], 3: ["\\boxed{3}", "\\boxed{3}", "\\boxed{3}"],
               4: ["2", "\\boxed{2}", "\\boxed{22}"]}
    truth = {0: "4", 1: "7", 2: "10", 3: "3", 4: "2"}
    data = PromptDataset([{"prompt": f"q{i}", "answer": truth[i], "data_source": "math"} for i in answers],
                         [[i] for i in answers])
    cfg = RewardConfig(terms=[RewardTerm(fn=MATH, weight=1.0, name="correct"),
                              RewardTerm(fn="or1.rewards.math:format_score", weight=0.1, name="format")],
                       timeout_s=5.0, num_workers=2)
    manager = RewardManager(cfg)
    engines = StreamingEngines({i: answers[i] for i in answers})
    indices = [3, 0, 4, 1, 2]
    try:
        samples, streamed = generate_and_score(engines, manager, CharTokenizer(), data, indices, 3, 1.0, 1.0, 16, None)
        texts = ["".join(map(chr, s.token_ids)) for s in samples]
        whole = manager.score(texts, [data.rows[indices[s.prompt_index]] for s in samples])
    finally:
        manager.close()
    assert [s.prompt_index for s in samples] == [g for g in range(5) for _ in range(3)]  # prompt order, n in order
    assert texts == [t for i in indices for t in answers[i]]
    assert streamed.rewards.tolist() == whole.rewards.tolist() and streamed.correct.tolist() == whole.correct.tolist()
    assert streamed.details == whole.details
    untimed = lambda scores: {k: v for k, v in scores.metrics().items() if not k.startswith("time/")}  # noqa: E731
    assert untimed(streamed) == untimed(whole)
    assert streamed.correct.sum() == 10 and streamed.items == whole.items == 30  # the data has right and wrong answers
