"""The ragged batch, token-budget micro-batches, balanced ranks, packed/padded layouts and the
packed attention kernel: pure functions, checked by hand and against dense references."""

import pytest
import torch

from or1.algo.packing import balance_ranks, build_micro_batch, plan_micro_batches
from or1.batch import SequenceBatch


def small_batch() -> SequenceBatch:
    return SequenceBatch.from_lists([[5, 6], [7]], [[8, 9, 2], [2]], advantages=[0.5, -0.5],
                                    rollout_log_probs=[[-1.0, -2.0, -3.0], [-4.0]])


def test_sequence_batch_layout_select_and_scatter():
    b = small_batch()
    assert b.token_ids.tolist() == [5, 6, 8, 9, 2, 7, 2] and b.token_ids.dtype == torch.int32
    assert b.rollout_log_probs.tolist() == [-1.0, -2.0, -3.0, -4.0]
    assert b.sequences() == [([5, 6], [8, 9, 2]), ([7], [2])]
    swapped = b.select([1, 0])
    assert swapped.sequences() == [([7], [2]), ([5, 6], [8, 9, 2])]
    assert swapped.rollout_log_probs.tolist() == [-4.0, -1.0, -2.0, -3.0]
    assert swapped.advantages.tolist() == [-0.5, 0.5]
    assert b.per_response_token(b.advantages).tolist() == [0.5, 0.5, 0.5, -0.5]
    # outputs computed per shard come back in the batch's order
    parts = [torch.tensor([40.0]), torch.tensor([10.0, 20.0, 30.0])]
    assert b.scatter_response_values(parts, [[1], [0]]).tolist() == [10.0, 20.0, 30.0, 40.0]
    # 7 int32 tokens, 2+2 int32 lengths, 2 float advantages, 2 bool flags, 4 float log-probs
    assert b.nbytes() == 7 * 4 + 4 * 4 + 2 * 4 + 2 + 4 * 4
    with pytest.raises(ValueError, match="response tokens"):
        b.with_values(old_log_probs=torch.zeros(3))
    with pytest.raises(ValueError, match="prompt token"):
        SequenceBatch.from_lists([[]], [[1]])


def micro_batch_tokens(lengths: list[int], padded: bool) -> int:
    """Tokens one forward computes: their sum packed, rows x the longest row padded."""
    return len(lengths) * max(lengths) if padded else sum(lengths)


def test_first_fit_decreasing_respects_the_budget_and_runs_long_sequences_alone():
    lengths = [5, 9, 3, 30, 4, 6, 2]
    plan = plan_micro_batches(lengths, max_tokens=12)
    assert sorted(i for mb in plan for i in mb) == list(range(7))  # every sequence exactly once
    assert plan[0] == [3]  # 30 > 12: alone
    assert all(micro_batch_tokens([lengths[i] for i in mb], False) <= 12 for mb in plan[1:])
    # FFD by hand: 9 -> A; 6 -> B; 5 -> B (11); 4 -> C; 3 -> A (12); 2 -> C (6)
    assert plan[1:] == [[1, 2], [5, 0], [4, 6]]
    # padded micro-batches count rows x the longest row: 9+3 fits packed, but 2 rows x 9 = 18 does not
    padded = plan_micro_batches(lengths, max_tokens=12, padded=True)
    assert all(micro_batch_tokens([lengths[i] for i in mb], True) <= 12 or len(mb) == 1 for mb in padded)
    assert [1] in padded and [5, 0] in padded  # 2 x 6 = 12 fits
    # a sequence cap; and no budget: consecutive rows (the layout before packing)
    assert all(len(mb) <= 2 for mb in plan_micro_batches([1] * 7, 100, max_sequences=2))
    assert plan_micro_batches(lengths, 0, max_sequences=3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_micro_batches([], 10) == []


def test_ranks_get_balanced_tokens():
    lengths = [100, 1, 1, 1, 1, 50, 49, 2, 3, 90]
    ranks = balance_ranks(lengths, 2)
    assert sorted(i for r in ranks for i in r) == list(range(10))
    loads = [sum(lengths[i] for i in r) for r in ranks]
    assert abs(loads[0] - loads[1]) <= max(lengths)
    # LPT by hand: 100 -> r0, 90 -> r1, 50 -> r1 (140), 49 -> r0 (149), then 3, 2, 1, 1, 1, 1 -> r1 (149)
    assert loads == [149, 149]
    # (contiguous halves, what equal-row sharding did, give 104 vs 194 tokens here)
    assert balance_ranks([5], 3) == [[0], [], []]


def test_packed_and_padded_micro_batches_by_hand():
    b = small_batch()
    packed = build_micro_batch(b, [1, 0], packed=True)
    assert packed.input_ids.tolist() == [[7, 2, 5, 6, 8, 9, 2]]
    assert packed.position_ids.tolist() == [[0, 1, 0, 1, 2, 3, 4]]
    assert packed.cu_seq_lens.tolist() == [0, 2, 7] and packed.max_length == 5
    # sequence [7 | 2] predicts 2 from position 0; [5 6 | 8 9 2] predicts 8, 9, 2 from positions 3, 4, 5
    assert packed.logit_positions.tolist() == [0, 3, 4, 5]
    assert packed.targets.tolist() == [2, 8, 9, 2]
    assert packed.response_index.tolist() == [3, 0, 1, 2]  # where those tokens live in the batch's values
    assert packed.token_sequence.tolist() == [0, 1, 1, 1]
    assert packed.advantages.tolist() == [-0.5, 0.5, 0.5, 0.5]
    assert packed.computed_tokens == 7
    padded = build_micro_batch(b, [1, 0], packed=False)
    assert padded.input_ids.tolist() == [[7, 2, 0, 0, 0], [5, 6, 8, 9, 2]]
    assert padded.attention_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert padded.logit_positions.tolist() == [0, 6, 7, 8]  # row 1 starts at flat index 5
    assert padded.targets.tolist() == packed.targets.tolist() and padded.computed_tokens == 10


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_packed_attention_equals_a_block_diagonal_causal_mask(kv_heads):
    """or1's varlen attention (the CPU path: one causal SDPA per sequence) against dense attention with
    a block-diagonal causal mask over the whole row; with grouped-query attention too."""
    from or1.workers.varlen_attention import varlen_attention

    g = torch.Generator().manual_seed(0)
    lengths = [3, 1, 3, 5]  # two of length 3: stacked into one SDPA call
    total = sum(lengths)
    q = torch.randn(1, 2, total, 8, generator=g)
    k, v = torch.randn(1, kv_heads, total, 8, generator=g), torch.randn(1, kv_heads, total, 8, generator=g)
    cu = torch.tensor([0, 3, 4, 7, 12], dtype=torch.int32)
    out, _ = varlen_attention(None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, max_length_q=5)
    seq = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))
    allowed = (seq[:, None] == seq[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    k_full, v_full = k.repeat_interleave(2 // kv_heads, 1), v.repeat_interleave(2 // kv_heads, 1)
    scores = (q @ k_full.transpose(-1, -2)) * 0.3
    dense = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v_full
    assert out.shape == (1, total, 2, 8)
    assert torch.allclose(out, dense.transpose(1, 2), atol=1e-5)
    with pytest.raises(RuntimeError, match="cu_seq_lens_q"):
        varlen_attention(None, q, k, v, None)
