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
        if float_tolerance > 0 and _close(nx, ny, Decimal(repr(float_tolerance))):
            continue
        return False
    return True


def _close(x: Decimal, y: Decimal, tolerance: Decimal) -> bool:
    """``math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance)`` in exact decimal arithmetic, so
    numbers beyond float range (``1e400`` vs ``9e400``) are not both infinity."""
    return abs(x - y) <= max(tolerance * max(abs(x), abs(y)), tolerance)


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
    """Equal JSON values; with ``float_tolerance`` numbers match within it at any depth (inside lists
    and dict values too). Booleans are never numbers here (``True`` does not match ``1``)."""
    return _values_match(normalise(got), normalise(expected), float_tolerance)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _values_match(got, expected, tol: float) -> bool:
    if _is_number(got) and _is_number(expected):
        if got == expected:
            return True
        if any(isinstance(v, float) and not math.isfinite(v) for v in (got, expected)):
            return False  # infinities and NaN match only themselves (NaN not even that)
        return tol > 0 and _close(Decimal(repr(got)) if isinstance(got, float) else Decimal(got),
                                  Decimal(repr(expected)) if isinstance(expected, float) else Decimal(expected),
                                  Decimal(repr(tol)))
    if isinstance(got, bool) or isinstance(expected, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(_values_match(g, e, tol) for g, e in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_values_match(got[k], expected[k], tol) for k in got)
    return got == expected
