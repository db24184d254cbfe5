"""Output and value comparison (sandbox/compare.py): the edge cases of the second attack round."""

from sandbox.compare import outputs_match, values_match


def test_numbers_beyond_float_range_are_compared_exactly():
    assert not outputs_match("1e400", "9e400", float_tolerance=1e-6)  # both were float('inf')
    assert outputs_match("1e400", "1.0000001e400", float_tolerance=1e-6)
    assert outputs_match("1.50\n2", "1.5\n2") and not outputs_match("1.5", "1.6", float_tolerance=1e-3)


def test_call_based_values_use_the_tolerance_at_any_depth():
    assert values_match([0.1 + 0.2], [0.3], float_tolerance=1e-9)
    assert not values_match([0.1 + 0.2], [0.3])  # no tolerance: exact
    assert values_match({"a": [1.0000001, (2, 3)]}, {"a": [1, [2, 3]]}, float_tolerance=1e-6)
    assert not values_match([1.0, 2.0], [1.0], float_tolerance=1.0)


def test_huge_integers_booleans_and_non_finite_values():
    big = 10 ** 5000
    assert values_match(big, big) and not values_match(big + 1, big)
    assert values_match(big + 1, big, float_tolerance=1e-6)  # relative: within
    assert not values_match(True, 1) and not values_match(0, False) and values_match(False, False)
    assert not values_match(float("nan"), 1.0, float_tolerance=0.5) and not values_match(float("inf"), 1e308, 0.1)
