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


@pytest.mark.parametrize("response,gold,expected", [
    ("\\boxed{(1, 3]}", "(1,3]", 1.0),  # intervals
    ("\\boxed{[2, 5)}", "(2,5]", 0.0),  # ... with their brackets checked
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", 1.0),  # sets, order-free
    ("\\boxed{5 \\text{ cm}}", "5", 1.0),  # units
    ("\\boxed{\\dfrac{3}{4}}", "3/4", 1.0),  # LaTeX vs plain
    ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),  # symbolic equivalence
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1.0),
    ("\\boxed{x = 4}", "4", 1.0),
    ("\\boxed{2} then \\boxed{3}", "3", 1.0),  # the last box is the answer ...
    ("\\boxed{2} then \\boxed{3}", "2", 0.0),  # ... not any box
    ("\\boxed{50\\%}", "50", 0.0),  # math-verify keeps percent distinct
])
def test_math_equivalences(response, gold, expected):
    assert score(response, {"answer": gold}) == expected


def test_extraction_order_and_fallbacks():
    from or1.rewards.math import extract_answer, format_score

    text = "The answer is 17. Also 12 apples."
    assert extract_answer(text, ["boxed"]) == (None, "")
    assert extract_answer(text, ["boxed", "answer_is", "last_number"]) == ("17. Also 12 apples", "answer_is")
    assert extract_answer(text, ["boxed", "last_number"]) == ("12", "last_number")
    assert extract_answer("x \\boxed{\\frac{1}{2}} y", ["boxed", "whole"]) == ("\\frac{1}{2}", "boxed")
    assert score("so 12 apples", {"answer": "12"}, fallbacks=["boxed"]) == 0.0
    assert score("so 12 apples", {"answer": "12"}, fallbacks=["boxed", "last_number"]) == 1.0
    with pytest.raises(ValueError):
        extract_answer("x", ["psychic"])
    assert format_score("<think>hm</think> \\boxed{3}", {}) == 1.0
    assert format_score("<think>hm \\boxed{3}", {}) == 0.0  # unclosed think
    assert format_score("\\boxed{3} \\boxed{4}", {}) == 0.0
