"""Rollout groups, and the padded tensor batch the learner trains on, built from them.

A ``Group`` is the n responses to one prompt with what the step learned about them; the driver,
the sample buffer and the batch builder all use this one type.

Layout of batch row i: the prompt's tokens, then the response's tokens, then padding
(right-padded), so positions are 0..len-1 exactly as vLLM saw them. ``response_mask[i, t]`` is 1
where token t is a response token (those carry loss); per-token tensors are aligned with
``input_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def batch_from_groups(groups: Sequence[Group], pad_id: int) -> dict[str, torch.Tensor]:
    """The padded batch of every response of ``groups`` (group order, then response order).

    Adds ``advantages`` (``[B]``), ``rollout_log_probs`` (vLLM's values; 0 for replayed groups) and
    ``fresh`` (``[B]`` bool: the row was sampled by vLLM this step, so its log-probs are comparable).
    """
    if any(g.advantages is None for g in groups):
        raise ValueError("every group needs its advantages before it becomes a batch")
    rows = [(g, i) for g in groups for i in range(g.size)]
    batch = build_batch([g.prompt_ids for g, _ in rows], [g.responses[i] for g, i in rows], pad_id,
                        torch.cat([g.advantages for g in groups]) if groups else torch.zeros(0),
                        [g.rollout_log_probs[i] if g.rollout_log_probs is not None else [0.0] * len(g.responses[i])
                         for g, i in rows])
    batch["fresh"] = torch.tensor([g.rollout_log_probs is not None for g, _ in rows], dtype=torch.bool)
    return batch


def build_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                pad_id: int, advantages: Sequence[float] | torch.Tensor | None = None,
                rollout_log_probs: Sequence[Sequence[float]] | None = None) -> dict[str, torch.Tensor]:
    """Pad (prompt + response) rows into tensors.

    Returns ``input_ids``, ``attention_mask``, ``response_mask`` and, when given, ``advantages``
    (``[B]``) and ``rollout_log_probs`` (``[B, L]``, vLLM's values at response positions).
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError("one prompt per response is required")
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    B, L = len(lengths), max(lengths, default=0)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    response_mask = torch.zeros((B, L), dtype=torch.float32)
    rollout_lp = torch.zeros((B, L), dtype=torch.float32) if rollout_log_probs is not None else None
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        n_p, n = len(p), lengths[i]
        input_ids[i, :n] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, n_p:n] = 1.0
        if rollout_lp is not None:
            rollout_lp[i, n_p:n] = torch.tensor(rollout_log_probs[i], dtype=torch.float32)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
    if advantages is not None:
        batch["advantages"] = torch.as_tensor(advantages, dtype=torch.float32).reshape(B)
    if rollout_lp is not None:
        batch["rollout_log_probs"] = rollout_lp
    return batch


def slice_batch(batch: dict[str, torch.Tensor], start: int, end: int) -> dict[str, torch.Tensor]:
    """Rows ``start:end``, trimmed to the longest row in the slice (less padding to compute)."""
    part = {k: v[start:end] for k, v in batch.items()}
    width = int(part["attention_mask"].sum(1).max().item()) if end > start else 0
    return {k: (v[:, :width] if v.ndim == 2 else v) for k, v in part.items()}


def select_rows(batch: dict[str, torch.Tensor], rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """The given rows (in that order), trimmed to the longest of them."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    part = {k: v.index_select(0, index) for k, v in batch.items()}
    width = int(part["attention_mask"].sum(1).max().item()) if len(index) else 0
    return {k: (v[:, :width] if v.ndim == 2 else v) for k, v in part.items()}


def shard_rows(batch: dict[str, torch.Tensor], world_size: int) -> list[dict[str, torch.Tensor]]:
    """Split rows into ``world_size`` contiguous shards of equal row count, one per learner rank.

    Sharded backends run collectives in every forward, so all ranks must process the same number
    of micro-batches: short shards are padded with copies of row 0 whose ``response_mask`` is zero
    (no loss tokens, not counted as sequences). ``unshard_rows`` drops the padding again.
    """
    rows = batch["input_ids"].shape[0]
    per_rank = -(-rows // world_size)
    shards = []
    for r in range(world_size):
        index = list(range(r * per_rank, min((r + 1) * per_rank, rows)))
        pad = per_rank - len(index)
        shard = select_rows(batch, index + [0] * pad)
        if pad:
            shard["response_mask"] = shard["response_mask"].clone()
            shard["response_mask"][len(index):] = 0.0
        shards.append(shard)
    return shards


def unshard_rows(parts: Sequence[torch.Tensor], rows: int) -> torch.Tensor:
    """Inverse of ``shard_rows`` for per-row outputs (``[rows_r, L_r]`` each): concatenated rows,
    padding rows dropped, right-padded with zeros to the widest shard."""
    width = max(p.shape[1] for p in parts)
    out = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
    return out[:rows]
