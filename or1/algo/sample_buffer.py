"""Selective Sample Buffer (Skywork-R1V2, arXiv 2504.16656).

When most groups of a batch have zero advantage (all right / all wrong), the policy gradient
vanishes. The buffer keeps recent groups that did carry signal and mixes some back into batches
whose informative fraction fell below a threshold. Their advantages are the ones computed when
they were generated; their old log-probs are recomputed by the current learner, so the PPO ratio
stays a ratio against the policy being updated.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

from or1.batch import Group


class SelectiveSampleBuffer:
    def __init__(self, capacity_groups: int):
        if capacity_groups < 1:
            raise ValueError("the sample buffer needs capacity_groups >= 1")
        self.groups: deque[Group] = deque(maxlen=capacity_groups)

    def add(self, group: Group) -> None:
        """Keep ``group`` if any of its advantages is non-zero (the oldest entry leaves when full).
        Only what a replay needs is kept (no vLLM log-probs)."""
        if group.advantages is not None and bool((group.advantages != 0).any()):
            self.groups.append(replace(group, rollout_log_probs=None, replayed=True))

    def sample(self, k: int, rng: random.Random) -> list[Group]:
        """Up to ``k`` distinct groups, drawn uniformly."""
        return rng.sample(list(self.groups), min(k, len(self.groups)))

    def __len__(self) -> int:
        return len(self.groups)

    def state_dict(self) -> dict:
        return {"capacity": self.groups.maxlen, "groups": [g.state_dict() for g in self.groups]}

    def load_state_dict(self, state: dict) -> None:
        """The checkpoint's groups, the newest ``capacity_groups`` of them (the configured capacity wins)."""
        self.groups = deque((replace(Group.from_state_dict(g), replayed=True) for g in state["groups"]),
                            maxlen=self.groups.maxlen)
