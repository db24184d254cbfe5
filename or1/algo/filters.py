"""Online filtering of prompt groups (OR1 section 3.1; DAPO's dynamic sampling)."""

from __future__ import annotations

import math

import torch


def groups_with_signal(advantages: torch.Tensor) -> torch.Tensor:
    """``[G]`` bool: groups with at least one non-zero advantage (``advantages`` is ``[G, n]``).

    A group whose advantages are all zero contributes no gradient and only dilutes the token-mean
    loss: for binary rewards these are OR1's all-wrong (accuracy 0) and all-right (accuracy 1)
    groups, and with ``algorithm.truncation_mask`` also groups whose only differing responses were
    masked (rewards ``[1, 0, 0, 0]`` with the last three truncated under ``before``: no signal).
    Filtering on the advantages, not the rewards, is what makes the mask and the filter agree.
    """
    return (advantages != 0).any(dim=1)


def select_groups(advantages: torch.Tensor, room: int, drop_zero_advantage: bool = True) -> list[int]:
    """Indices (in order) of one generation round's groups to keep, at most ``room`` of them.

    With ``drop_zero_advantage`` a group is kept only if ``groups_with_signal``; otherwise every
    group is. ``room`` is what the step still needs (``prompts_per_step`` minus the groups kept in
    earlier refill rounds): groups beyond it are generated but not trained on.
    """
    keep = groups_with_signal(advantages) if drop_zero_advantage else torch.ones(advantages.shape[0], dtype=torch.bool)
    return [i for i in torch.nonzero(keep).flatten().tolist()][:max(room, 0)]


def mastered_groups(correct: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """``[G]`` bool: prompts whose group accuracy reached ``threshold`` (OR1 drops them from later epochs)."""
    return correct.float().mean(dim=1) >= threshold


def refill_prompts(deficit: int, informative_estimate: float, max_oversample: float) -> int:
    """Prompts to generate in a refill round that still needs ``deficit`` informative groups.

        k = ceil(deficit / p),    p = clamp(informative_estimate, 1 / max_oversample, 1)

    Asking for only the deficit when a fraction p of groups is informative keeps about p x deficit
    and needs about log(deficit) / log(1 / (1 - p)) rounds; asking for deficit / p expects to fill
    it in one. ``max_oversample`` bounds the waste when p is tiny or badly estimated (1: only the
    deficit, the behaviour before oversampling).
    """
    if deficit <= 0:
        return 0
    p = min(1.0, max(informative_estimate, 1.0 / max(max_oversample, 1.0)))
    return math.ceil(deficit / p - 1e-9)


class InformativeFraction:
    """Running estimate of the fraction of generated groups that carry a non-zero advantage.

        p <- (1 - w) * p + w * (informative / generated)    after each generation round

    Starts at 1 (no oversampling before any evidence). Part of the trainer's checkpoint state, so a
    resumed run asks for the same numbers of prompts.
    """

    def __init__(self, weight: float = 0.3, value: float = 1.0):
        self.weight, self.value = weight, value

    def observe(self, informative: int, generated: int) -> None:
        if generated > 0:
            self.value = (1 - self.weight) * self.value + self.weight * informative / generated

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
