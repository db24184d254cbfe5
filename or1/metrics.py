"""Per-step metrics: one console line, ``metrics.jsonl``, optionally wandb (offline by default) and
TensorBoard, sampled responses (``samples.jsonl``); and ``PhaseTimer``, the one way the driver times
its phases."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

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

    ``metrics()`` gives ``time/<phase>`` for every phase entered (refill rounds add up). With a
    ``progress`` (``or1.progress.Progress``) every phase is also shown live, with its ``detail``
    (counts: "256 prompts x 16").
    """

    def __init__(self, progress=None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        # durations of many small events ("reward_latency": a chunk of prompts from generated to scored)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.progress = progress

    @contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[None]:
        start = time.perf_counter()
        if self.progress is not None:
            self.progress.enter(name, detail)
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            if self.progress is not None:
                self.progress.exit(name)

    def merge(self, other: "PhaseTimer") -> None:
        """Add another timer's phases and latencies (work done on another thread for this step)."""
        for name, seconds in other.seconds.items():
            self.seconds[name] += seconds
        for name, values in other.latencies.items():
            self.latencies[name] += values

    def metrics(self) -> dict[str, float]:
        out = {f"time/{name}": seconds for name, seconds in self.seconds.items()}
        for name, values in self.latencies.items():
            if values:
                out[f"time/{name}_p50"] = float(np.median(values))
                out[f"time/{name}_max"] = float(max(values))
        return out


class MetricsLogger:
    """Every step's metrics to ``metrics.jsonl`` (always) and to the configured backends: console,
    wandb (the same ``run_id`` continues the same wandb run), TensorBoard (``<output_dir>/tensorboard``).
    A backend that cannot start or fails while logging is reported once and switched off: a lost
    dashboard never stops training. ``log_samples`` appends to ``samples.jsonl`` (and a wandb table).
    On resume (``resume_step``) records after that step, written by the interrupted run, are dropped."""

    def __init__(self, output_dir: str, backends: list[str], run_config: dict | None = None,
                 wandb_mode: str = "offline", project: str = "or1", name: str = "run",
                 run_id: str | None = None, resume_step: int | None = None):
        unknown = {str(b) for b in backends} - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown loggers {sorted(unknown)}; use {', '.join(BACKENDS)}")
        self.backends = {str(b) for b in backends} | {"jsonl"}
        self.path = Path(output_dir) / "metrics.jsonl"
        self.samples_path = Path(output_dir) / "samples.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            for path in (self.path, self.samples_path):
                _drop_after(path, resume_step)
        self._wandb = self._tensorboard = None
        if "wandb" in self.backends and str(wandb_mode) != "disabled":
            self._wandb = self._start("wandb", lambda: _wandb_run(output_dir, wandb_mode, project, name, run_id,
                                                                   run_config))
        if "tensorboard" in self.backends:
            self._tensorboard = self._start("tensorboard", lambda: _tensorboard_writer(output_dir, resume_step))

    def _start(self, backend: str, start):
        try:
            return start()
        except Exception as exc:  # noqa: BLE001 - a dashboard must not stop training
            log.warning("logger %s could not start (%s: %s); training goes on without it", backend,
                        type(exc).__name__, exc)
            return None

    def _guard(self, backend: str, write) -> None:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - a dashboard must not stop training
            log.warning("logger %s failed (%s: %s) and is switched off; metrics.jsonl goes on", backend,
                        type(exc).__name__, exc)
            if backend == "wandb":
                self._wandb = None
            elif backend == "tensorboard":
                self._tensorboard = None
            else:
                self.backends.discard(backend)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        if "jsonl" in self.backends:
            self._guard("jsonl", lambda: _append(self.path, [record]))
        if "console" in self.backends:
            parts = [f"step {step}"]
            parts += [f"{label} {metrics[k]:{fmt}}" for k, label, fmt in _CONSOLE if k in metrics]
            log.info(" | ".join(parts))
        if self._wandb is not None:
            self._guard("wandb", lambda: self._wandb.log(record, step=step))
        if self._tensorboard is not None:
            def write():
                for k, v in record.items():
                    if k != "step" and isinstance(v, float):
                        self._tensorboard.add_scalar(k, v, step)
                self._tensorboard.flush()
            self._guard("tensorboard", write)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Sampled (prompt, response, reward, ...) rows of one step: ``samples.jsonl`` and a wandb table."""
        if not rows:
            return
        records = [{"step": step, **row} for row in rows]
        self._guard("jsonl", lambda: _append(self.samples_path, records))
        if self._wandb is not None:
            def write():
                import wandb

                columns = list(records[0])
                table = wandb.Table(columns=columns, data=[[json.dumps(r[c]) if isinstance(r[c], (dict, list))
                                                            else r[c] for c in columns] for r in records])
                self._wandb.log({"samples": table}, step=step)
            self._guard("wandb", write)

    def close(self) -> None:
        if self._wandb is not None:
            self._guard("wandb", self._wandb.finish)
        if self._tensorboard is not None:
            self._guard("tensorboard", self._tensorboard.close)


BACKENDS = ("console", "jsonl", "wandb", "tensorboard")


def _wandb_run(output_dir, mode, project, name, run_id, run_config):
    import wandb

    # the same id continues the same wandb run (a resume); a new id starts a new one (init_from)
    return wandb.init(project=project, name=name, dir=str(output_dir), mode=str(mode), config=run_config or {},
                      id=run_id, resume="allow")


def _tensorboard_writer(output_dir, resume_step):
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: events after the checkpoint, written by the interrupted run, are hidden
    return SummaryWriter(str(Path(output_dir) / "tensorboard"),
                         purge_step=resume_step + 1 if resume_step is not None else None)


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _drop_after(path: Path, step: int) -> None:
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _plain(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)
