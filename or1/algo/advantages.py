"""Group-normalised advantages (GRPO) and the truncated-response mask, as pure tensor functions."""

from __future__ import annotations

import torch

from or1.config import AdvBaseline, TruncationMask


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6, norm_by_std: bool = True,
                     baseline: AdvBaseline | str = AdvBaseline.mean, valid: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Per-response advantages within each prompt group.

    ``rewards`` has shape ``[num_groups, n]`` (the n responses of one prompt in a row).

        A_ij = (r_ij - b_ij) / (std_j + eps)     if norm_by_std
        A_ij =  r_ij - b_ij                       otherwise (Dr. GRPO)

    with the baseline ``b_ij = mean_j r`` (``baseline="mean"``, OR1) or the mean of the *other*
    responses of the group (``"leave_one_out"``, RLOO: b_ij = (sum_j r - r_ij) / (m - 1)).
    ``std`` is Bessel-corrected (divides by m - 1), as in OR1's released code.

    ``valid`` (bool, same shape) restricts the statistics to some responses (the truncation mask
    ``before``); invalid responses get exactly zero advantage. A group with fewer than two valid
    responses, or whose valid rewards are all equal, gets exactly zero advantage.
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [num_groups, n], got shape {tuple(rewards.shape)}")
    baseline = _choice(AdvBaseline, baseline, "baseline")
    rewards = rewards.to(torch.float32)
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    w = valid.float()
    m = w.sum(dim=1, keepdim=True)
    total = (rewards * w).sum(dim=1, keepdim=True)
    mean = total / m.clamp(min=1)
    if baseline == AdvBaseline.mean:
        b = mean
    else:
        b = (total - rewards) / (m - 1).clamp(min=1)
    centred = rewards - b
    if norm_by_std:
        var = (((rewards - mean) * w) ** 2).sum(dim=1, keepdim=True) / (m - 1).clamp(min=1)
        centred = centred / (var.sqrt() + eps)
    enough = m >= 2
    # all-equal groups: r - b is exactly 0 under both baselines, so the result is exactly 0
    return torch.where(valid & enough, centred, torch.zeros_like(centred))


def apply_truncation_mask(rewards: torch.Tensor, truncated: torch.Tensor, mode: TruncationMask | str,
                          eps: float = 1e-6, norm_by_std: bool = True,
                          baseline: AdvBaseline | str = AdvBaseline.mean) -> torch.Tensor:
    """Advantages with OR1's treatment of responses cut at the length limit (``[G, n]`` inputs).

    - ``none``: truncated responses are ordinary samples (their reward is usually 0, so their
      advantage is negative: OR1's adopted "No-Adv-Mask").
    - ``before``: truncated responses are left out of the group statistics and get advantage 0.
    - ``after``: statistics over all responses, then truncated responses' advantages set to 0.
    """
    mode = _choice(TruncationMask, mode, "truncation mask")
    truncated = truncated.to(torch.bool)
    if mode == TruncationMask.before:
        return group_advantages(rewards, eps, norm_by_std, baseline, valid=~truncated)
    adv = group_advantages(rewards, eps, norm_by_std, baseline)
    if mode == TruncationMask.after:
        adv = torch.where(truncated, torch.zeros_like(adv), adv)
    return adv


def _choice(kind, value, what: str):
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {[c.value for c in kind]}, got {value!r}") from None
