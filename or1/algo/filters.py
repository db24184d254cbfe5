"""Online filtering of prompt groups (OR1 section 3.1; DAPO's dynamic sampling)."""

from __future__ import annotations

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
