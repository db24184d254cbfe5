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


class PrefixRefill:
    """Streaming refill: which prompts a step generates, decided while they generate, reproducibly.

    The step first draws ``target`` prompts. Their groups are judged in the order their prompts were
    drawn (never in the order they finish, which depends on timing); after judging the j-th:

        kept_j     = groups kept among the first j (a non-zero advantage)
        expected_j = kept_j + p * (drawn - j)        the groups not judged yet, at the fraction p
        draw ceil((target - expected_j) / p) more prompts when expected_j < target

    with p = clamp(informative_estimate, 1 / max_oversample, 1), and at most ``max_prompts`` drawn.
    The batch is complete once ``target`` groups are kept (groups after that one are not trained on;
    their prompts are aborted) or every drawn group is judged. A group that turns out all-right or
    all-wrong thus frees its place for a new prompt as soon as it and the groups drawn before it are
    judged, while the engines keep generating, instead of after a whole round.
    """

    def __init__(self, target: int, informative_estimate: float, max_oversample: float, max_prompts: int):
        self.target, self.max_prompts = target, max_prompts
        self.p = min(1.0, max(informative_estimate, 1.0 / max(max_oversample, 1.0)))
        self.drawn = self.judged = self.kept = 0
        self.refills = self.refill_prompts = 0  # draws after the first, and their prompts
        self.refill_deficit = 0.0  # the expected shortfalls those draws were asked to cover

    def start(self) -> int:
        """Prompts to draw first."""
        return self._draw(self.target)

    def judge(self, kept: bool) -> int:
        """The next group in draw order was judged; returns how many prompts to draw now."""
        self.judged += 1
        self.kept += bool(kept)
        if self.complete:
            return 0
        short = self.target - self.kept - self.p * (self.drawn - self.judged)
        if short <= 1e-9:
            return 0
        count = self._draw(math.ceil(short / self.p - 1e-9))
        if count:
            self.refills += 1
            self.refill_prompts += count
            self.refill_deficit += short
        return count

    @property
    def complete(self) -> bool:
        return self.kept >= self.target or self.judged == self.drawn

    def _draw(self, count: int) -> int:
        count = max(0, min(count, self.max_prompts - self.drawn))
        self.drawn += count
        return count


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
