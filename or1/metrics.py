"""Per-step metrics: one console line, ``metrics.jsonl``, and optionally wandb (offline by default);
and ``PhaseTimer``, the one way the driver times its phases."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("or1")

# Console line: (metric key, label, format)
_CONSOLE = [
    ("reward/mean", "reward", ".3f"), ("acc/mean", "acc", ".3f"), ("val/acc", "val_acc", ".3f"),
    ("response_length/mean", "len", ".1f"), ("actor/entropy", "entropy", ".3f"),
    ("actor/pg_loss", "pg_loss", ".4f"), ("actor/grad_norm", "grad", ".3f"),
    ("time/generate", "gen", ".1f"), ("time/update", "upd", ".1f"), ("time/sync", "sync", ".2f"),
    ("time/step", "step_s", ".1f"),
]


class PhaseTimer:
    """Wall-clock seconds per phase, summed over every entry: ``with timer.phase("generate"): ...``.

    ``metrics()`` gives ``time/<phase>`` for every phase entered (refill rounds add up).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{name}": seconds for name, seconds in self.seconds.items()}


class MetricsLogger:
    def __init__(self, output_dir: str, backends: list[str], run_config: dict | None = None,
                 wandb_mode: str = "offline", project: str = "or1", name: str = "run",
                 run_id: str | None = None, resume_step: int | None = None):
        unknown = {str(b) for b in backends} - {"console", "jsonl", "wandb"}
        if unknown:
            raise ValueError(f"unknown loggers {sorted(unknown)}; use console, jsonl, wandb")
        self.backends = [str(b) for b in backends]
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # steps after the checkpoint will be logged again: drop the interrupted run's copies
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._wandb = None
        if "wandb" in self.backends and str(wandb_mode) != "disabled":
            import wandb

            # the same id on resume continues the same wandb run
            self._wandb = wandb.init(project=project, name=name, dir=str(output_dir), mode=str(wandb_mode),
                                     config=run_config or {}, id=run_id, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        if "jsonl" in self.backends:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if "console" in self.backends:
            parts = [f"step {step}"]
            parts += [f"{label} {metrics[k]:{fmt}}" for k, label, fmt in _CONSOLE if k in metrics]
            log.info(" | ".join(parts))
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def _plain(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)
