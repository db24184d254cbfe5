"""Group-normalised advantages (GRPO), as pure tensor functions."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6, norm_by_std: bool = True) -> torch.Tensor:
    """Per-response advantages within each prompt group.

    ``rewards`` has shape ``[num_groups, n]`` (the n responses of one prompt in a row).

        A_ij = (r_ij - mean_j r_ij) / (std_j r_ij + eps)     if norm_by_std
        A_ij =  r_ij - mean_j r_ij                            otherwise (Dr. GRPO)

    ``std`` is Bessel-corrected (divides by n - 1), as in OR1's released code. A group whose
    rewards are all equal gets exactly zero advantage, and so does a group of one response
    (its std is undefined; there is nothing to compare it with).
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [num_groups, n], got shape {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float32)
    n = rewards.shape[1]
    if n < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not norm_by_std:
        return centred
    std = rewards.std(dim=1, keepdim=True, correction=1)
    # all-equal groups: centred is exactly 0, so 0 / (0 + eps) = 0 — no special case needed
    return centred / (std + eps)
