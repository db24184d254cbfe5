"""The mini-batch plan: which groups each optimizer step of a rollout batch trains on."""

from __future__ import annotations

import numpy as np


def near_equal_splits(count: int, parts: int) -> list[int]:
    """``parts`` sizes adding up to ``count`` that differ by at most one, larger ones first."""
    base, extra = divmod(count, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def plan_mini_batches(num_groups: int, mini_batch_groups: int, epochs: int = 1,
                      rng: np.random.Generator | None = None) -> list[list[int]]:
    """Optimizer steps as lists of group indices: ``epochs`` passes over ``num_groups`` groups.

        k = ceil(G / m) mini-batches per epoch    (m = mini_batch_groups; m = 0 or m >= G: k = 1)
        sizes: G split into k near-equal parts     (129 groups, m = 128: 65 + 64, never 128 + 1)

    A group is never split across steps, and every group is in exactly one step of each epoch.
    With a single step in all (one epoch, k = 1) the groups keep their order; otherwise each epoch
    draws a fresh permutation from ``rng`` (seed it for reproducible runs).

    Why near-equal: Adam moves the weights by about the learning rate whatever the gradient's
    scale, so a 1-group tail step would move the policy as far as a 128-group one on a far
    noisier gradient.
    """
    if num_groups < 0 or mini_batch_groups < 0 or epochs < 1:
        raise ValueError(f"need num_groups >= 0, mini_batch_groups >= 0, epochs >= 1; got {num_groups}, "
                         f"{mini_batch_groups}, {epochs}")
    if num_groups == 0:
        return []
    k = -(-num_groups // mini_batch_groups) if mini_batch_groups else 1
    shuffle = epochs > 1 or k > 1
    if shuffle and rng is None:
        raise ValueError("several optimizer steps per batch need an rng to order the groups")
    plan = []
    for _ in range(epochs):
        order = rng.permutation(num_groups).tolist() if shuffle else list(range(num_groups))
        start = 0
        for size in near_equal_splits(num_groups, k):
            plan.append(order[start:start + size])
            start += size
    return plan
