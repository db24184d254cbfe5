"""The code verifier end to end: or1 starts the real sandbox service and judges programs."""

import json

import pytest

from or1.config import RewardConfig, RewardRoute, RewardTerm, SandboxConfig
from or1.rewards.code import extract_program, judgement_deadline_s
from or1.rewards.manager import RewardManager

TESTS = json.dumps({"inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"]})
RIGHT = "Sum them.\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
HALF = "```python\na, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n```"
LOOP = "```python\nwhile True:\n    pass\n```"
SLOW_RIGHT = "```python\nimport time\ntime.sleep(0.3)\na, b = map(int, input().split())\nprint(a + b)\n```"


def test_extracts_the_last_fenced_block_after_thinking():
    text = "<think>```python\nprint(0)\n```</think>first\n```py\nprint(1)\n```\nthen\n```\nprint(2)\n```"
    assert extract_program(text) == "print(2)\n"
    assert extract_program("<think>```python\nprint(0)\n```</think> no code") is None


def test_code_rewards_through_a_local_sandbox():
    """One local service for both checks: verdicts, statuses, and the deadline of slow correct programs."""
    many_tests = json.dumps({"inputs": [f"{i} 1\n" for i in range(10)], "outputs": [f"{i + 1}\n" for i in range(10)]})
    code = RewardTerm(fn="or1.rewards.code:score", kwargs={"timeout_s": 2.0})
    cfg = RewardConfig(routes={"code": RewardRoute(terms=[code]),
                               "code_partial": RewardRoute(terms=[RewardTerm(fn="or1.rewards.code:score",
                                                                             kwargs={"partial_credit": True,
                                                                                     "timeout_s": 2.0})])},
                       sandbox=SandboxConfig(start_local=True), num_workers=2,
                       # far below the 10 slow tests' ~3.5 s: a whole-judgement deadline here scored a
                       # correct program 0 (timeout); the verifier's own deadline is 10 x (2 + 1) + 30 s
                       timeout_s=1.0)
    manager = RewardManager(cfg)
    service = manager.sandbox
    try:
        rows = [{"data_source": "code", "tests": TESTS}] * 4 + [{"data_source": "code_partial", "tests": TESTS}]
        out = manager.score([RIGHT, HALF, LOOP, "no code at all", HALF], rows)
        slow = manager.score([SLOW_RIGHT, LOOP], [{"data_source": "code", "tests": many_tests}] * 2)
    finally:
        manager.close()
    assert service.proc.poll() is not None  # stopped with the manager
    assert out.rewards.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 2 / 3])
    assert out.correct.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    m = out.metrics()
    assert m["reward/errors"] == 0.0 and m["reward/timeouts"] == 0.0
    assert m["reward/score/status_timeout"] > 0  # the busy loop was judged a timeout by the sandbox
    assert m["reward/score/no_code"] == pytest.approx(1 / 5)
    # 10 tests x 0.3 s: correct, not a pool timeout; the hanging program is stopped by the sandbox's
    # per-test limit at its first test (2 s), well inside the deadline, and scores 0
    assert slow.rewards.tolist() == [1.0, 0.0] and slow.timeouts == 0 and slow.errors == 0
    assert slow.values["score/status_timeout"] == [0.0, 1.0]
    assert manager.deadline_s(code, {"tests": many_tests}) == judgement_deadline_s({"tests": many_tests}, 2.0) == 60.0
