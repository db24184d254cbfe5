"""Output comparison, following the conventions code-RL datasets rely on.

``outputs_match(got, expected)`` (stdin/stdout tests), LiveCodeBench's rule: strip both, split
into lines, strip each line; the line counts must be equal and each pair of lines equal exactly
or, token by token, equal as decimal numbers (so ``1.50`` matches ``1.5``). With
``float_tolerance`` > 0, numeric tokens also match within that relative/absolute tolerance
(other judges use 1e-6 or 1e-5); the default 0 keeps LiveCodeBench's exact decimal rule.

``values_match(got, expected)`` (call-based tests): JSON values, tuples compared as lists.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation


def _number(token: str) -> Decimal | None:
    try:
        value = Decimal(token)
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def _tokens_match(a: str, b: str, float_tolerance: float) -> bool:
    ta, tb = a.split(), b.split()
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x == y:
            continue
        nx, ny = _number(x), _number(y)
        if nx is None or ny is None:
            return False
        if nx == ny:
            continue
        if float_tolerance > 0 and math.isclose(float(nx), float(ny), rel_tol=float_tolerance,
                                                abs_tol=float_tolerance):
            continue
        return False
    return True


def outputs_match(got: str, expected: str, float_tolerance: float = 0.0) -> bool:
    got_lines = [line.strip() for line in got.strip().splitlines()]
    exp_lines = [line.strip() for line in expected.strip().splitlines()]
    if len(got_lines) != len(exp_lines):
        return False
    return all(g == e or _tokens_match(g, e, float_tolerance) for g, e in zip(got_lines, exp_lines))


def normalise(value):
    """Tuples become lists, recursively (JSON has no tuples)."""
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


def values_match(got, expected, float_tolerance: float = 0.0) -> bool:
    got, expected = normalise(got), normalise(expected)
    if float_tolerance > 0 and isinstance(got, (int, float)) and isinstance(expected, (int, float)) \
            and not isinstance(got, bool):
        return math.isclose(got, expected, rel_tol=float_tolerance, abs_tol=float_tolerance)
    return got == expected
