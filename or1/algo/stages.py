"""Multi-stage context growth: which stage a step belongs to."""

from __future__ import annotations

from typing import Sequence


def stage_at(step: int, stage_steps: Sequence[int]) -> int:
    """Index of the stage that step ``step`` (0-based) falls in.

    Stage i covers ``stage_steps[i]`` steps after the stages before it; the last stage also covers
    every step beyond the schedule. ``stage_steps=[100, 50, 0]`` → steps 0-99 stage 0, 100-149
    stage 1, 150+ stage 2.
    """
    if not stage_steps:
        raise ValueError("no stages")
    end = 0
    for i, steps in enumerate(stage_steps[:-1]):
        end += steps
        if step < end:
            return i
    return len(stage_steps) - 1
