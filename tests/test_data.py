import pytest

from or1.data.arithmetic import generate_splits
from or1.data.dataset import EpochSampler


def test_arithmetic_splits_are_disjoint_and_correct():
    train, val = generate_splits(500, 100, max_operand=30, seed=3)
    assert len(train) == 500 and len(val) == 100
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}
    for r in train[:50]:
        a, b = r["prompt"].split("+")
        assert int(a) + int(b) == int(r["answer"])
    assert generate_splits(500, 100, max_operand=30, seed=3) == (train, val)


def test_arithmetic_refuses_impossible_sizes():
    with pytest.raises(ValueError):
        generate_splits(100, 50, max_operand=9)


def test_sampler_covers_each_epoch_once_and_resumes_exactly():
    s = EpochSampler(10, seed=1)
    first = s.next_batch(4) + s.next_batch(4)
    tail = s.next_batch(4)  # 2 from epoch 0, 2 from epoch 1
    assert sorted(first + tail[:2]) == list(range(10))
    state = s.state_dict()
    expected = s.next_batch(7)
    resumed = EpochSampler(10, seed=1)
    resumed.load_state_dict(state)
    assert resumed.next_batch(7) == expected
    assert EpochSampler(10, seed=2).next_batch(10) != EpochSampler(10, seed=1).next_batch(10)
