"""Rollout groups, and the ragged batch of sequences the learners train on, built from them.

A ``Group`` is the n responses to one prompt with what the step learned about them; the driver,
the sample buffer and the batch builder all use this one type.

A ``SequenceBatch`` is what travels from the driver to the learners: token lists, never padded.
Sequence i is its prompt's tokens followed by its response's tokens (positions 0..len-1 exactly
as vLLM saw them); the sequences are concatenated into one int32 tensor. Values that exist per
response token (vLLM's log-probs, the learner's old and reference log-probs) are concatenated
the same way, response by response, into float32 tensors of ``num_response_tokens`` entries.
The learner packs or pads each micro-batch from it (``or1.algo.packing``); nothing else is ever
padded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch


@dataclass
class Group:
    """The responses to one prompt, their scores and (once computed) their advantages."""

    prompt_index: int  # index into the training data; -1 when unknown (buffer entries of old checkpoints)
    prompt_ids: list[int]
    responses: list[list[int]]
    rewards: torch.Tensor  # [size] float
    correct: torch.Tensor  # [size] float, 0/1
    truncated: torch.Tensor  # [size] bool: stopped by the length limit
    rollout_log_probs: list[list[float]] | None = None  # vLLM's log-prob of each sampled token (fresh groups)
    advantages: torch.Tensor | None = None  # [size], set by the driver
    replayed: bool = False  # from the sample buffer: its advantages were computed when it was generated

    @property
    def size(self) -> int:
        """Responses in the group (rollout.n when it was generated)."""
        return len(self.responses)

    def response_tokens(self) -> int:
        return sum(len(r) for r in self.responses)

    def state_dict(self) -> dict:
        """Plain-JSON form (sample buffer checkpoints): what a replay needs, without vLLM's log-probs."""
        return {"prompt_index": self.prompt_index, "prompt_ids": self.prompt_ids, "responses": self.responses,
                "rewards": self.rewards.tolist(), "correct": self.correct.tolist(),
                "truncated": self.truncated.tolist(),
                "advantages": None if self.advantages is None else self.advantages.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Group":
        size = len(state["responses"])
        zeros = [0.0] * size  # buffer entries of checkpoints before 2026-11-24 carry advantages only
        return cls(state.get("prompt_index", -1), list(state["prompt_ids"]), [list(r) for r in state["responses"]],
                   torch.tensor(state.get("rewards", zeros), dtype=torch.float32),
                   torch.tensor(state.get("correct", zeros), dtype=torch.float32),
                   torch.tensor(state.get("truncated", [False] * size), dtype=torch.bool),
                   advantages=None if state.get("advantages") is None
                   else torch.tensor(state["advantages"], dtype=torch.float32))


def group_rows(sizes: Sequence[int], groups: Sequence[int]) -> list[int]:
    """Batch rows of the given groups, in that order, when group g occupies ``sizes[g]`` consecutive
    rows after the groups before it. Groups of different sizes are never split."""
    starts = [0]
    for s in sizes:
        starts.append(starts[-1] + s)
    return [row for g in groups for row in range(starts[g], starts[g + 1])]


# the per-response-token values a SequenceBatch may carry, in the order they travel
TOKEN_VALUES = ("rollout_log_probs", "old_log_probs", "ref_log_probs")


@dataclass
class SequenceBatch:
    """Sequences without padding (see the module docstring); every tensor lives on the CPU.

    ``token_ids``: ``[num_tokens]`` int32, every sequence's prompt then response, sequences concatenated.
    ``prompt_lengths`` / ``response_lengths``: ``[num_sequences]`` int32.
    ``advantages``: ``[num_sequences]`` float32 (one value per response).
    ``fresh``: ``[num_sequences]`` bool, the response was sampled by vLLM this step (its
    ``rollout_log_probs`` are vLLM's; replayed responses carry zeros there).
    ``rollout_log_probs`` / ``old_log_probs`` / ``ref_log_probs``: ``[num_response_tokens]``
    float32, response by response; None until known.
    """

    token_ids: torch.Tensor
    prompt_lengths: torch.Tensor
    response_lengths: torch.Tensor
    advantages: torch.Tensor
    fresh: torch.Tensor
    rollout_log_probs: torch.Tensor | None = None
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None

    @classmethod
    def from_lists(cls, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                   advantages: Sequence[float] | torch.Tensor | None = None,
                   rollout_log_probs: Sequence[Sequence[float]] | None = None,
                   fresh: Sequence[bool] | None = None) -> "SequenceBatch":
        """One sequence per (prompt, response) pair. Prompts must not be empty: a response's first
        token is predicted from its prompt's last."""
        if len(prompts) != len(responses):
            raise ValueError(f"one prompt per response is required: {len(prompts)} prompts, "
                             f"{len(responses)} responses")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("a sequence needs at least one prompt token")
        count = len(prompts)
        flat = [t for p, r in zip(prompts, responses) for t in (*p, *r)]
        token_values = None
        if rollout_log_probs is not None:
            if [len(v) for v in rollout_log_probs] != [len(r) for r in responses]:
                raise ValueError("rollout_log_probs needs one value per response token")
            token_values = torch.tensor([v for values in rollout_log_probs for v in values], dtype=torch.float32)
        return cls(torch.tensor(flat, dtype=torch.int32),
                   torch.tensor([len(p) for p in prompts], dtype=torch.int32),
                   torch.tensor([len(r) for r in responses], dtype=torch.int32),
                   torch.zeros(count) if advantages is None
                   else torch.as_tensor(advantages, dtype=torch.float32).reshape(count).clone(),
                   torch.ones(count, dtype=torch.bool) if fresh is None
                   else torch.tensor(list(fresh), dtype=torch.bool),
                   rollout_log_probs=token_values)

    # --- sizes -------------------------------------------------------------------------------
    @property
    def num_sequences(self) -> int:
        return int(self.prompt_lengths.shape[0])

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_lengths.sum())

    def sequence_lengths(self) -> torch.Tensor:
        """``[num_sequences]`` int64: prompt + response tokens of each sequence."""
        return self.prompt_lengths.long() + self.response_lengths.long()

    def sequence_starts(self) -> torch.Tensor:
        """``[num_sequences]`` int64: where each sequence begins in ``token_ids``."""
        lengths = self.sequence_lengths()
        return torch.cumsum(lengths, 0) - lengths

    def response_starts(self) -> torch.Tensor:
        """``[num_sequences]`` int64: where each response's values begin in the per-token tensors."""
        lengths = self.response_lengths.long()
        return torch.cumsum(lengths, 0) - lengths

    def nbytes(self) -> int:
        """Bytes of tensor data this batch carries (what Ray serialises when it is sent)."""
        return sum(t.numel() * t.element_size() for f in fields(self)
                   if isinstance(t := getattr(self, f.name), torch.Tensor))

    # --- per-token views ---------------------------------------------------------------------
    def per_response_token(self, per_sequence: torch.Tensor) -> torch.Tensor:
        """A per-sequence tensor repeated for each of the sequence's response tokens."""
        return per_sequence.repeat_interleave(self.response_lengths.long())

    def sequence(self, row: int) -> tuple[list[int], list[int]]:
        """(prompt tokens, response tokens) of one sequence."""
        start = int(self.sequence_starts()[row])
        prompt = int(self.prompt_lengths[row])
        end = start + prompt + int(self.response_lengths[row])
        ids = self.token_ids[start:end].tolist()
        return ids[:prompt], ids[prompt:]

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        return [self.sequence(i) for i in range(self.num_sequences)]

    # --- selecting and merging ---------------------------------------------------------------
    def response_token_index(self, rows: Sequence[int]) -> torch.Tensor:
        """Indices into the per-response-token tensors of the given rows' tokens, row by row."""
        return spans(self.response_starts(), self.response_lengths.long(), rows)

    def select(self, rows: Sequence[int]) -> "SequenceBatch":
        """The given sequences, in that order (a row may repeat)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        token_index = spans(self.sequence_starts(), self.sequence_lengths(), rows)
        response_index = self.response_token_index(rows)
        values = {name: None if (v := getattr(self, name)) is None else v[response_index] for name in TOKEN_VALUES}
        return SequenceBatch(self.token_ids[token_index], self.prompt_lengths[index], self.response_lengths[index],
                             self.advantages[index], self.fresh[index], **values)

    def with_values(self, **values: torch.Tensor) -> "SequenceBatch":
        """A copy with per-response-token tensors set (``old_log_probs=...``); sizes are checked."""
        for name, v in values.items():
            if name not in TOKEN_VALUES:
                raise KeyError(f"{name} is not a per-token value of a SequenceBatch ({TOKEN_VALUES})")
            if v.shape != (self.num_response_tokens,):
                raise ValueError(f"{name} has shape {tuple(v.shape)}; the batch has {self.num_response_tokens} "
                                 "response tokens")
        return replace(self, **values)

    def scatter_response_values(self, parts: Sequence[torch.Tensor], rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Inverse of ``select`` for per-response-token outputs: ``parts[k]`` holds the values of the
        rows ``rows[k]`` (as ``select(rows[k])`` ordered them); returns them in this batch's order."""
        out = torch.zeros(self.num_response_tokens, dtype=torch.float32)
        for values, part_rows in zip(parts, rows):
            out[self.response_token_index(part_rows)] = values.to(torch.float32)
        return out


def spans(starts: torch.Tensor, lengths: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """Concatenated ``arange(starts[r], starts[r] + lengths[r])`` over ``rows``."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    span_lengths = lengths[index]
    offsets = torch.cumsum(span_lengths, 0) - span_lengths  # where each span begins in the output
    within = torch.arange(int(span_lengths.sum())) - offsets.repeat_interleave(span_lengths)
    return starts[index].repeat_interleave(span_lengths) + within


def batch_from_groups(groups: Sequence[Group]) -> SequenceBatch:
    """Every response of ``groups`` (group order, then response order) with its advantage, vLLM's
    log-probs (zeros for replayed groups) and ``fresh`` (sampled this step)."""
    if any(g.advantages is None for g in groups):
        raise ValueError("every group needs its advantages before it becomes a batch")
    rows = [(g, i) for g in groups for i in range(g.size)]
    return SequenceBatch.from_lists(
        [g.prompt_ids for g, _ in rows], [g.responses[i] for g, i in rows],
        torch.cat([g.advantages for g in groups]) if groups else torch.zeros(0),
        [g.rollout_log_probs[i] if g.rollout_log_probs is not None else [0.0] * len(g.responses[i]) for g, i in rows],
        fresh=[g.rollout_log_probs is not None for g, _ in rows])
