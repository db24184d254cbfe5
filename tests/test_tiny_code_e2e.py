"""The tiny code-RL recipe end to end (``long``: ~1.5 minutes on 2 cores): every response of every
step is judged by the run's own sandbox service through the code verifier.

Run: ``.venv/bin/python -m pytest -m long tests/test_tiny_code_e2e.py``. The tiny model's programs
are almost all invalid; what is checked is the plumbing under training load: rewards, sandbox
statuses and judgement latency in the metrics, and nothing left running or on disk after exit.
"""

import os
import subprocess

import pytest

from sandbox.runner import RUNS_ROOT, _service_alive

from .conftest import run_training
from .test_sandbox import sandbox_uid_processes


@pytest.mark.long
def test_tiny_code_recipe_runs_through_the_sandbox(tmp_path):
    out = tmp_path / "run"
    records = run_training(out, "recipe=tiny_code_cpu")
    steps = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    for r in steps:
        judged = 1.0 - r["reward/score/no_code"]
        assert judged > 0.5, r  # most 8-byte responses are programs to judge (fenced_only=false)
        statuses = sum(r[f"reward/score/status_{s}"] for s in ("ok", "runtime_error", "timeout", "memory_limit",
                                                               "output_limit", "compile_error", "sandbox_error"))
        assert statuses == pytest.approx(1.0)  # every judged test has a status
        assert r["reward/score/status_sandbox_error"] == 0.0  # the service never failed a run
        assert 0 < r["reward/score/judge_s"] < 10 and r["time/reward"] > 0
        assert r["reward/errors"] == 0 and r["reward/timeouts"] == 0
    vals = [r for r in records if any(k.startswith("val/") for k in r)]
    assert vals, "validation was judged too"
    # nothing left behind: no service, no run process, no run directory of a stopped service
    assert (out / "sandbox.log").exists()  # the local service logged into the run directory
    assert sandbox_uid_processes() == []
    stray = subprocess.run(["pgrep", "-f", "sandbox.*--parent-pid"], capture_output=True, text=True).stdout.split()
    assert stray == [], stray
    leftovers = [d for d in os.listdir(RUNS_ROOT) if d.startswith("svc-") and not _service_alive(d)]
    assert leftovers == [], leftovers
