"""The math verifier: ``score(response, sample)`` with the ground truth in ``sample["answer"]``.

Grading (OR1's rule, made explicit):
1. Only the text after the last ``</think>`` is graded (the whole response if there is none).
2. The answer is extracted by the first extractor in ``fallbacks`` that finds one:
   ``boxed`` (content of the last ``\\boxed{...}``), ``answer_is`` (the rest of the last line
   saying "answer is" / "Answer:"), ``last_number`` (the last number in the text), ``whole``
   (the whole graded text, left to math-verify's own extraction).
3. Correct if the extracted answer equals the gold string, else if math-verify finds the gold,
   wrapped in ``\\boxed{}`` (wrapping makes it parse as LaTeX), equivalent to the answer. A list
   of gold answers (Skywork-OR1's data) is correct if any one of them is.

Binary reward. ``format_score`` is a separate reward for combining (weight it by configuration).
Run it through ``or1.rewards.pool.RewardPool`` (the trainer does): math-verify can take unbounded
time on pathological input, and only a killable process bounds that.
"""

from __future__ import annotations

import os
import re
import threading

THINK_END = "</think>"
DEFAULT_FALLBACKS = ("boxed", "whole")
MAX_ANSWER_CHARS = 2000  # longer extracted answers are wrong by definition (and costly to parse)


def answer_text(response: str) -> str:
    """The part of a response that is graded: what follows the last ``</think>``."""
    return response.rsplit(THINK_END, 1)[-1].strip()


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


_ANSWER_IS = re.compile(r"(?:answer is|answer:)\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def extract_answer(text: str, fallbacks=DEFAULT_FALLBACKS) -> tuple[str | None, str]:
    """(answer, extractor name) by the first extractor in ``fallbacks`` that finds one."""
    for name in fallbacks:
        if name == "boxed":
            found = last_boxed(text)
        elif name == "answer_is":
            matches = _ANSWER_IS.findall(text)
            found = matches[-1].strip().rstrip(".").strip("$ ") if matches else None
        elif name == "last_number":
            numbers = _NUMBER.findall(text)
            found = numbers[-1].replace(",", "") if numbers else None
        elif name == "whole":
            found = text if text else None
        else:
            raise ValueError(f"unknown answer extractor {name!r}; use boxed, answer_is, last_number, whole")
        if found:
            return found, name
    return None, ""


def _timeouts() -> int | None:
    """math-verify's own SIGALRM timeouts only work on a main thread; inside the reward pool's
    workers the pool's deadline is the bound, so they are off there."""
    if os.environ.get("OR1_REWARD_WORKER") or threading.current_thread() is not threading.main_thread():
        return None
    return 5


def is_correct(response: str, gold, fallbacks=DEFAULT_FALLBACKS) -> bool:
    """Whether the response's final answer matches ``gold``: one answer, or a list of acceptable
    ones (any match counts; the response is extracted and parsed once)."""
    from math_verify import parse, verify

    answer, how = extract_answer(answer_text(response), fallbacks)
    golds = [str(g).strip() for g in (gold if isinstance(gold, (list, tuple)) else [gold])]
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return False
    if answer in golds:
        return True
    timeout = _timeouts()
    candidate = answer if how == "whole" else "\\boxed{" + answer + "}"
    parsed = parse(candidate, parsing_timeout=timeout)
    if not parsed:
        return False
    return any(verify(parse("\\boxed{" + g + "}", parsing_timeout=timeout), parsed, timeout_seconds=timeout)
               for g in golds)


def score(response: str, sample: dict, fallbacks=DEFAULT_FALLBACKS) -> float:
    """1.0 if the response's final answer equals ``sample["answer"]`` (or, when that is a list of
    acceptable answers, any one of them), else 0.0."""
    return 1.0 if is_correct(response, sample["answer"], tuple(fallbacks)) else 0.0


def format_score(response: str, sample: dict) -> float:
    """1.0 if the graded part holds exactly one ``\\boxed{}`` answer and any ``<think>`` is closed."""
    if "<think>" in response and THINK_END not in response:
        return 0.0
    return 1.0 if answer_text(response).count("\\boxed{") == 1 and last_boxed(answer_text(response)) else 0.0


def _warmup() -> None:
    """Import math-verify and sympy and exercise the parser once (seconds, paid before any deadline)."""
    is_correct("\\boxed{\\frac{1}{2}}", "0.5")


score.warmup = _warmup
format_score.warmup = _warmup
