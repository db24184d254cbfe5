"""Online filtering of prompt groups (OR1 section 3.1; DAPO's dynamic sampling)."""

from __future__ import annotations

import torch


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """``[G]`` bool: groups whose rewards are not all equal.

    A group with all-equal rewards has zero advantage everywhere and only dilutes the token-mean
    loss; for binary rewards these are OR1's all-wrong (accuracy 0) and all-right (accuracy 1)
    groups. ``rewards`` is ``[G, n]``.
    """
    return (rewards != rewards[:, :1]).any(dim=1)


def mastered_groups(correct: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """``[G]`` bool: prompts whose group accuracy reached ``threshold`` (OR1 drops them from later epochs)."""
    return correct.float().mean(dim=1) >= threshold
