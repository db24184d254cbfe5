"""The code verifier end to end: or1 starts the real sandbox service and judges programs."""

import json

import pytest

from or1.config import RewardConfig, RewardTerm, SandboxConfig
from or1.rewards.code import extract_program
from or1.rewards.manager import RewardManager

TESTS = json.dumps({"inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"]})
RIGHT = "Sum them.\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
HALF = "```python\na, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n```"
LOOP = "```python\nwhile True:\n    pass\n```"


def test_extracts_the_last_fenced_block_after_thinking():
    text = "<think>```python\nprint(0)\n```</think>first\n```py\nprint(1)\n```\nthen\n```\nprint(2)\n```"
    assert extract_program(text) == "print(2)\n"
    assert extract_program("<think>```python\nprint(0)\n```</think> no code") is None


def test_code_rewards_through_a_local_sandbox():
    cfg = RewardConfig(routes={"code": [RewardTerm(fn="or1.rewards.code:score", kwargs={"timeout_s": 2.0})],
                               "code_partial": [RewardTerm(fn="or1.rewards.code:score",
                                                           kwargs={"partial_credit": True, "timeout_s": 2.0})]},
                       sandbox=SandboxConfig(start_local=True), num_workers=2, timeout_s=30)
    manager = RewardManager(cfg)
    try:
        rows = [{"data_source": "code", "tests": TESTS}] * 4 + [{"data_source": "code_partial", "tests": TESTS}]
        out = manager.score([RIGHT, HALF, LOOP, "no code at all", HALF], rows)
    finally:
        manager.close()
    assert manager.sandbox.proc.poll() is not None  # stopped with the manager
    assert out.rewards.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 2 / 3])
    assert out.correct.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert out.metrics["reward/errors"] == 0.0
    assert out.metrics["reward/score/status_timeout"] > 0  # the busy loop was judged a timeout
    assert out.metrics["reward/score/no_code"] == pytest.approx(1 / 5)
