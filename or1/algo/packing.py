"""Micro-batches by token budget, ranks balanced by tokens, and the tensors of one packed (or
padded) micro-batch. Pure functions on lengths and CPU tensors; the learner runs what they plan.

Why: reasoning responses vary in length by two orders of magnitude within one batch. A micro-batch
of consecutive rows padded to its longest row spends most of its FLOPs on padding; packing
sequences into one row (attention kept inside each sequence) and filling micro-batches up to a
token budget spends them on tokens.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import torch

from or1.batch import SequenceBatch, spans


def plan_micro_batches(lengths: Sequence[int], max_tokens: int, max_sequences: int = 0,
                       padded: bool = False) -> list[list[int]]:
    """Micro-batches (lists of sequence indices) of at most ``max_tokens`` computed tokens each.

    First-fit decreasing: sequences, longest first (ties by index), each go into the first
    micro-batch with room, else open a new one. Room means the micro-batch's computed tokens (their
    sum when packed; rows x the longest row when ``padded``) stay within ``max_tokens`` and, when
    ``max_sequences > 0``, it holds fewer than ``max_sequences`` sequences. A sequence longer than
    ``max_tokens`` runs alone. FFD uses at most 11/9 OPT + 1 micro-batches (Dosa 2007).

    ``max_tokens == 0``: no token budget, ``max_sequences`` consecutive sequences per micro-batch
    in their order (the layout before packing, kept for comparisons).
    """
    count = len(lengths)
    if max_tokens < 0 or max_sequences < 0:
        raise ValueError(f"max_tokens and max_sequences must be >= 0, got {max_tokens}, {max_sequences}")
    if max_tokens == 0:
        if max_sequences < 1:
            raise ValueError("without a token budget, micro-batches need max_sequences >= 1")
        return [list(range(s, min(s + max_sequences, count))) for s in range(0, count, max_sequences)]
    order = sorted(range(count), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    loads: list[int] = []  # packed: tokens so far; padded: the first (longest) row's length
    for i in order:
        length = lengths[i]
        for b, members in enumerate(bins):
            if max_sequences and len(members) >= max_sequences:
                continue
            cost = (len(members) + 1) * loads[b] if padded else loads[b] + length
            if cost <= max_tokens:
                members.append(i)
                if not padded:
                    loads[b] += length
                break
        else:
            bins.append([i])
            loads.append(length)
    return bins


def balance_ranks(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Sequence indices for each data-parallel rank, so every rank gets about the same tokens.

    Longest processing time first: sequences, longest first (ties by index), each to the rank with
    the fewest tokens so far (ties: the lower rank). Every rank's load is within the longest
    sequence of every other's. Each rank's indices come back in increasing order.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    heap = [(0, r) for r in range(world_size)]
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, r = heapq.heappop(heap)
        ranks[r].append(i)
        heapq.heappush(heap, (load + lengths[i], r))
    return [sorted(rows) for rows in ranks]


@dataclass
class MicroBatch:
    """The model's input for some sequences of a ``SequenceBatch``, and where each response
    token's prediction sits in its output.

    Packed (``cu_seq_lens`` set): one row holding the sequences back to back, ``position_ids``
    restarting at 0 for each; attention must stay inside each sequence (or1's varlen attention
    reads ``cu_seq_lens``). Padded (``attention_mask`` set): one right-padded row per sequence.

    ``logit_positions[j]``: flat index (row x width + column) of the hidden state that predicts
    response token j (the position just before it); ``targets[j]``: that token.
    ``response_index[j]``: where token j's values live in the batch's per-response-token tensors.
    ``token_sequence[j]``: which of this micro-batch's sequences token j belongs to.
    """

    input_ids: torch.Tensor  # [rows, width] int64
    position_ids: torch.Tensor  # [rows, width] int64
    attention_mask: torch.Tensor | None  # [rows, width] int64, padded layout only
    cu_seq_lens: torch.Tensor | None  # [sequences + 1] int32, packed layout only
    max_length: int  # the longest sequence
    logit_positions: torch.Tensor  # [response tokens] int64
    targets: torch.Tensor  # [response tokens] int64
    response_index: torch.Tensor  # [response tokens] int64
    token_sequence: torch.Tensor  # [response tokens] int64
    response_lengths: torch.Tensor  # [sequences] int64
    advantages: torch.Tensor  # [response tokens] float32, each token its sequence's advantage

    @property
    def computed_tokens(self) -> int:
        return int(self.input_ids.numel())

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor | int]:
        """Keyword arguments for a Hugging Face causal LM's forward."""
        inputs: dict[str, torch.Tensor | int] = {"input_ids": self.input_ids.to(device),
                                                 "position_ids": self.position_ids.to(device)}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask.to(device)
        else:  # transformers passes these through to the attention function (FlashAttentionKwargs)
            cu = self.cu_seq_lens.to(device)
            inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=self.max_length,
                          max_length_k=self.max_length)
        return inputs


def build_micro_batch(batch: SequenceBatch, rows: Sequence[int], packed: bool) -> MicroBatch:
    """The ``MicroBatch`` of ``batch``'s sequences ``rows`` (in that order), packed or padded."""
    rows = list(rows)
    index = torch.as_tensor(rows, dtype=torch.long)
    lengths = batch.sequence_lengths()[index]
    prompts = batch.prompt_lengths.long()[index]
    responses = batch.response_lengths.long()[index]
    tokens = batch.token_ids[spans(batch.sequence_starts(), batch.sequence_lengths(), rows)].long()
    count, longest = len(rows), int(lengths.max()) if rows else 0
    if packed:
        width = int(lengths.sum())
        starts = torch.cumsum(lengths, 0) - lengths  # where each sequence begins in the row
        input_ids = tokens.unsqueeze(0)
        position_ids = (torch.arange(width) - starts.repeat_interleave(lengths)).unsqueeze(0)
        attention_mask = None
        cu_seq_lens = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)]).to(torch.int32)
    else:
        width = longest
        starts = torch.arange(count) * width  # row k begins at flat index k * width
        input_ids = torch.zeros(count * width, dtype=torch.long)
        attention_mask = torch.zeros(count * width, dtype=torch.long)
        cells = spans(starts, lengths, range(count))
        input_ids[cells] = tokens
        attention_mask[cells] = 1
        input_ids, attention_mask = input_ids.view(count, width), attention_mask.view(count, width)
        position_ids = torch.arange(width).expand(count, width).contiguous()
        cu_seq_lens = None
    # response token t of a sequence starting at s with prompt p sits at s + p + t; its predictor at s + p + t - 1
    logit_positions = spans(starts + prompts - 1, responses, range(count))
    return MicroBatch(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, cu_seq_lens=cu_seq_lens,
        max_length=longest, logit_positions=logit_positions, targets=input_ids.reshape(-1)[logit_positions + 1],
        response_index=batch.response_token_index(rows),
        token_sequence=torch.arange(count).repeat_interleave(responses), response_lengths=responses,
        advantages=batch.advantages[index].repeat_interleave(responses).to(torch.float32))
