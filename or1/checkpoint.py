"""Checkpoint directories: atomic commits, a ``latest`` pointer, keep-last-k, resume resolution.

Layout under ``<output_dir>/checkpoints/``::

    step_00000010/            a complete checkpoint (only complete ones carry this name)
        learner/              sharded model + optimizer (torch distributed checkpoint)
        rank0_state.pt        LR scheduler and torch RNG state, per learner rank
        hf/                   config.json + tokenizer (no weights): what `or1.export` needs
        trainer_state.json    step, stage, sampler (position, mastered set), entropy
                              controller, sample buffer, logger run id, world size
        config.yaml           the run's resolved configuration
    step_00000012.tmp/        being written; never read; removed when the next save starts
    latest                    the name of the newest complete checkpoint, replaced last

A checkpoint becomes visible by ``os.replace(tmp, final)`` (atomic on POSIX) and only then does
``latest`` move (written to a temporary file and renamed, fsynced). A process killed at any
point leaves the previous complete checkpoint as ``latest``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{8})$")
# Testing hook: "after_shards:<step>" SIGKILLs the driver once the learner wrote that step's shards,
# before the checkpoint is committed (tests/test_checkpoint_e2e.py proves resume survives it).
FAULT_ENV = "OR1_FAULT_INJECT"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


class CheckpointDirs:
    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir) / CHECKPOINTS

    def begin(self, step: int) -> Path:
        """A fresh temporary directory for step ``step``'s checkpoint (stale ones are removed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / (step_name(step) + ".tmp")
        tmp.mkdir()
        return tmp

    def commit(self, tmp: Path, keep_last: int) -> Path:
        """Make ``tmp`` a complete checkpoint, point ``latest`` at it, prune older ones."""
        final = self.root / tmp.name.removesuffix(".tmp")
        if final.exists():
            shutil.rmtree(final)
        _fsync_dir(tmp)
        os.replace(tmp, final)
        pointer_tmp = self.root / (LATEST + ".tmp")
        with open(pointer_tmp, "w") as f:
            f.write(final.name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer_tmp, self.root / LATEST)
        _fsync_dir(self.root)
        if keep_last > 0:
            for old in self.complete()[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        pointer = self.root / LATEST
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if _NAME.match(candidate.name) and (candidate / STATE_FILE).is_file():
                return candidate
        done = self.complete()  # pointer missing or stale: the newest complete one
        return done[-1] if done else None


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """``off`` → None; ``auto`` → the latest complete checkpoint in ``output_dir`` (None if none);
    otherwise a path to a checkpoint directory (or to a run's output dir: its latest)."""
    if resume == "off":
        return None
    if resume == "auto":
        return CheckpointDirs(output_dir).latest()
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        return path
    if (path / CHECKPOINTS).is_dir():
        found = CheckpointDirs(path).latest()
        if found is not None:
            return found
    raise FileNotFoundError(f"trainer.resume={resume!r} is not a complete checkpoint "
                            f"(no {STATE_FILE}) nor a run directory holding one")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
