import textwrap

import pytest

from or1.rewards.loader import RewardConfigError, load_reward_fn, reward_value
from or1.rewards.math import score


@pytest.mark.parametrize("response,gold,expected", [
    ("47", "47", 1.0),
    ("48", "47", 0.0),
    ("<think>maybe 12</think> the answer is \\boxed{47}", "47", 1.0),
    ("<think>47</think> 46", "47", 0.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("", "47", 0.0),
])
def test_math_score(response, gold, expected):
    assert score(response, {"answer": gold}) == expected


def test_load_from_module_and_file(tmp_path):
    assert load_reward_fn("or1.rewards.math:score") is score
    f = tmp_path / "my_reward.py"
    f.write_text(textwrap.dedent("""
        def length_bonus(response, sample):
            return {"score": len(response) / 10, "chars": len(response)}
    """))
    fn = load_reward_fn(f"{f}:length_bonus")
    assert reward_value(fn("abcde", {})) == (0.5, {"chars": 5.0})


@pytest.mark.parametrize("spec", ["nope", "or1.rewards.math:missing", "no.such.module:fn",
                                  "/no/such/file.py:fn", "or1.rewards.math:THINK_END"])
def test_bad_specs_fail_at_load(spec):
    with pytest.raises(RewardConfigError):
        load_reward_fn(spec)


def test_wrong_signature_fails_at_load(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("def fn(response):\n    return 1.0\n")
    with pytest.raises(RewardConfigError, match="must accept"):
        load_reward_fn(f"{f}:fn")
