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
from dataclasses import dataclass


@dataclass
class BufferedGroup:
    prompt_ids: list[int]
    responses: list[list[int]]
    advantages: list[float]


class SelectiveSampleBuffer:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("the sample buffer needs capacity >= 1")
        self.groups: deque[BufferedGroup] = deque(maxlen=capacity)

    def add(self, group: BufferedGroup) -> None:
        """Keep ``group`` if any of its advantages is non-zero (the oldest entry leaves when full)."""
        if any(a != 0.0 for a in group.advantages):
            self.groups.append(group)

    def sample(self, k: int, rng: random.Random) -> list[BufferedGroup]:
        """Up to ``k`` distinct groups, drawn uniformly."""
        return rng.sample(list(self.groups), min(k, len(self.groups)))

    def __len__(self) -> int:
        return len(self.groups)

    def state_dict(self) -> dict:
        return {"capacity": self.groups.maxlen, "groups": [vars(g) for g in self.groups]}

    def load_state_dict(self, state: dict) -> None:
        self.groups = deque((BufferedGroup(**g) for g in state["groups"]), maxlen=state["capacity"])
