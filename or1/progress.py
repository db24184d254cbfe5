"""What a long run is doing now, for the person watching it: the step, the phase and its counts,
how long each has taken, and when the step and the run should end.

- On a terminal: one status line under the log, redrawn every second (log lines clear it first,
  so they never mix with it).
- Into a file or a pipe: no control characters. A plain line when a phase has been running for
  ``interval_s`` and again every ``interval_s`` while it goes on; quick phases print nothing.

ETAs use the mean duration of the last ``window`` steps. ``Progress.text`` and ``Progress.due``
are pure functions of the clock, so tests drive them with a fake one.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Callable, TextIO

log = logging.getLogger("or1")

CLEAR_LINE = "\r\x1b[K"


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, total_steps: int, first_step: int = 0, stream: TextIO | None = None, interval_s: float = 30.0,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic, window: int = 10):
        self.total_steps, self.step = total_steps, first_step
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s, self.clock = interval_s, clock
        self.step_seconds: deque[float] = deque(maxlen=window)
        self.step_started: float | None = None
        self.phases: list[tuple[str, str, float]] = []  # (name, detail, started): nested phases, innermost last
        self.last_line = 0.0  # when the last plain line was printed (not a terminal)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._handlers: list[logging.Handler] = []

    # --- what the driver reports ---------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Step ``step`` (0-based: the number of steps done before it) starts."""
        with self._lock:
            self.step, self.step_started = step, self.clock()

    def end_step(self) -> None:
        with self._lock:
            if self.step_started is not None:
                self.step_seconds.append(self.clock() - self.step_started)
                self.step += 1  # steps done
            self.step_started = None

    def enter(self, phase: str, detail: str = "") -> None:
        with self._lock:
            now = self.clock()
            self.phases.append((phase, detail, now))
            self.last_line = now  # the first plain line comes interval_s into the phase

    def exit(self, phase: str) -> None:
        with self._lock:
            if self.phases and self.phases[-1][0] == phase:
                self.phases.pop()

    # --- what is shown ----------------------------------------------------------------------------
    def eta(self, now: float) -> tuple[float | None, float | None]:
        """(seconds left in this step, seconds left in the run), None before any step has ended."""
        if not self.step_seconds:
            return None, None
        mean = sum(self.step_seconds) / len(self.step_seconds)
        in_step = now - self.step_started if self.step_started is not None else 0.0
        step_left = max(0.0, mean - in_step)
        later_steps = max(0, self.total_steps - self.step - (1 if self.step_started is not None else 0))
        return step_left, step_left + later_steps * mean

    def text(self, now: float) -> str:
        parts = [f"step {self.step + (1 if self.step_started is not None else 0)}/{self.total_steps}"]
        for name, detail, started in self.phases:
            parts.append(f"{name}{f' ({detail})' if detail else ''} {duration(now - started)}")
        step_left, run_left = self.eta(now)
        if self.step_started is not None:
            parts.append(f"step {duration(now - self.step_started)}"
                         + (f", ~{duration(step_left)} left" if step_left is not None else ""))
        if run_left is not None:
            parts.append(f"run ETA {duration(run_left)}")
        return " | ".join(parts)

    def due(self, now: float) -> str | None:
        """The plain line to print now (not a terminal), or None."""
        if not self.phases or now - self.last_line < self.interval_s:
            return None
        self.last_line = now
        return self.text(now)

    # --- the display thread --------------------------------------------------------------------------
    def start(self) -> "Progress":
        if self.tty:
            for handler in logging.getLogger().handlers + log.handlers:
                if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "isatty", lambda: False)():
                    handler.addFilter(self._clear_before_record)
                    self._handlers.append(handler)
        self._thread = threading.Thread(target=self._run, name="or1-progress", daemon=True)
        self._thread.start()
        return self

    def _clear_before_record(self, record: logging.LogRecord) -> bool:
        self.stream.write(CLEAR_LINE)
        return True

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                now = self.clock()
                if self.tty:
                    line = self.text(now) if self.phases else None
                    if line:
                        self.stream.write(CLEAR_LINE + line)
                        self.stream.flush()
                else:
                    line = self.due(now)
                    if line:
                        log.info("progress: %s", line)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for handler in self._handlers:
            handler.removeFilter(self._clear_before_record)
        if self.tty:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()


class NoProgress(Progress):
    """Reports nowhere (the default of components that are not given one)."""

    def __init__(self):
        super().__init__(0, stream=None, tty=False)

    def start(self) -> "Progress":
        return self
