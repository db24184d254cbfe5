"""Soak (``long``: ~10 minutes on 2 cores): a local sandbox service driven by the code verifier
through 5,000 judgements of correct, wrong, hanging, crashing and hostile programs.

Run: ``.venv/bin/python -m pytest -m long tests/test_sandbox_soak.py -s`` (``OR1_SOAK_JUDGEMENTS``
sets the count). It checks: every judgement answers with the expected reward, the service's memory
stays flat, and at the end no run's process, run directory or cgroup is left; it prints the rate.
"""

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from or1.rewards.code import score
from or1.rewards.manager import LocalSandbox
from sandbox.runner import RUNS_ROOT

from .test_sandbox import sandbox_uid_processes

TESTS = {"inputs": ["3 4\n", "10 -2\n"], "outputs": ["7\n", "8\n"]}
PROGRAMS = {  # kind: (share of judgements, program, expected reward)
    "correct": (0.55, "a, b = map(int, input().split())\nprint(a + b)", 1.0),
    "wrong": (0.15, "a, b = map(int, input().split())\nprint(a - b)", 0.0),
    "crash": (0.08, "raise SystemExit(3)", 0.0),
    "hang": (0.04, "import time\ntime.sleep(100)", 0.0),
    "fork_bomb": (0.03, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", 0.0),
    "memory_bomb": (0.03, "b = []\nwhile True:\n    b.append(bytearray(2**25))", 0.0),
    "output_flood": (0.03, "while True:\n    print('y' * 4096)", 0.0),
    "daemon": (0.03, "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\nprint(7)", 0.0),
    "ptrace": (0.03, "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.ptrace(16, 1, 0, 0)\nprint(7)", 0.0),
    "deep_tree": (0.03, "import os\nfd = os.open('.', os.O_RDONLY)\nfor _ in range(2000):\n"
                        "    os.mkdir('d', dir_fd=fd)\n    n = os.open('d', os.O_RDONLY, dir_fd=fd)\n"
                        "    os.close(fd)\n    fd = n\nprint(7)", 0.0),
    "forged_infra": (0.03, "import sys\nsys.stderr.write('bwrap: fake\\n')\nsys.exit(1)", 0.0),
    "no_code": (0.02, None, 0.0),
}


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.long
def test_sandbox_soak(tmp_path):
    count = int(os.environ.get("OR1_SOAK_JUDGEMENTS", "5000"))
    rng = random.Random(0)
    kinds = rng.choices(list(PROGRAMS), weights=[v[0] for v in PROGRAMS.values()], k=count)
    sandbox = LocalSandbox(2, log_path=str(tmp_path / "sandbox.log"))
    service_pid = sandbox.proc.pid
    memory = []
    wrong: list[tuple[str, dict]] = []

    def judge(i_kind):
        i, kind = i_kind
        _, program, expected = PROGRAMS[kind]
        response = "no program here" if program is None else f"```python\n{program}\n```"
        out = score(response, {"tests": TESTS}, url=sandbox.url, timeout_s=1.0, memory_mb=256)
        if out["score"] != expected:
            wrong.append((kind, out))
        if i % 250 == 0:
            memory.append(rss_mib(service_pid))
        return kind

    t0 = time.time()
    try:
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(judge, enumerate(kinds)))
        elapsed = time.time() - t0
        assert len(done) == count and wrong == [], wrong[:5]
        # flat: the last quarter's service RSS within 30 MiB of the first sample after warm-up
        warm, last = memory[1], max(memory[-max(1, len(memory) // 4):])
        assert last - warm < 30, memory
        time.sleep(0.5)
        assert sandbox_uid_processes() == []
        service_dir = [d for d in os.listdir(RUNS_ROOT) if d.startswith(f"svc-{service_pid}-")]
        leftover = os.listdir(os.path.join(RUNS_ROOT, service_dir[0])) if service_dir else []
        assert leftover == [], leftover[:5]
        print(f"\nsoak: {count} judgements in {elapsed:.0f} s = {count / elapsed:.1f}/s "
              f"(2 slots); service RSS MiB {memory[0]:.0f} -> {memory[-1]:.0f} (max {max(memory):.0f})")
    finally:
        sandbox.stop()
    assert not [d for d in os.listdir(RUNS_ROOT) if d.startswith(f"svc-{service_pid}-")]
    assert sandbox_uid_processes() == []
