"""The math verifier: ``score(response, sample)`` with the ground truth in ``sample["answer"]``.

OR1's rule: score the text after ``</think>`` (the whole response if absent); an exact string
match with the gold answer is correct; otherwise math-verify compares the parsed response with
the gold answer wrapped in ``\\boxed{}`` (wrapping matters: it makes the gold parse as LaTeX).
Binary reward.

math-verify bounds its own work with SIGALRM, which only works on a process's main thread; off
the main thread its timeouts are disabled here instead of failing every sample.
"""

from __future__ import annotations

import threading

THINK_END = "</think>"


def answer_text(response: str) -> str:
    """The part of a response that is graded: what follows the last ``</think>``."""
    return response.rsplit(THINK_END, 1)[-1].strip()


def is_correct(response: str, gold: str) -> bool:
    from math_verify import parse, verify

    text = answer_text(response)
    gold = str(gold).strip()
    if text == gold:
        return True
    on_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if on_main else None
    parsed = parse(text, parsing_timeout=timeout)
    if not parsed:
        return False
    return bool(verify(parse("\\boxed{" + gold + "}", parsing_timeout=timeout), parsed,
                       timeout_seconds=timeout))


def score(response: str, sample: dict) -> float:
    return 1.0 if is_correct(response, sample["answer"]) else 0.0
