"""Sandbox throughput: executions per second of a trivial passing program.

    .venv/bin/python benchmarks/sandbox_throughput.py [--n 200] [--concurrency 2] \
        [--json benchmarks/results/sandbox.json]

Side by side in one run: (a) the isolated runner (bubblewrap + rlimits + uid drop) called
directly, (b) the full service over HTTP (/run), and (c) a naive ``subprocess.run([python, file])``
per execution with no isolation at all; the ratio and the per-run overhead are reported.
"""

from __future__ import annotations

from report import report  # benchmarks/report.py (scripts run from this folder)

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def naive(n: int, concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "main.py")
        with open(path, "w") as f:
            f.write(PROGRAM)

        def once(_):
            out = subprocess.run(["/usr/bin/python3", path], input="2 3\n", capture_output=True, text=True)
            assert out.stdout == "5\n"

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(once, range(n)))
        return time.perf_counter() - t0


def runner(n: int, concurrency: int) -> float:
    from sandbox.runner import run_program

    async def main():
        sem = asyncio.Semaphore(concurrency)

        async def once():
            async with sem:
                r = await run_program("python", PROGRAM, "2 3\n")
                assert r.status == "ok" and r.stdout == "5\n", r

        t0 = time.perf_counter()
        await asyncio.gather(*(once() for _ in range(n)))
        return time.perf_counter() - t0
    return asyncio.run(main())


def service(n: int, concurrency: int) -> float:
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", str(port), "--max-concurrency",
                             str(concurrency)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        body = json.dumps({"code": PROGRAM, "stdin": "2 3\n"}).encode()

        def once(_):
            req = urllib.request.Request(url + "/run", data=body, headers={"Content-Type": "application/json"})
            got = json.loads(urllib.request.urlopen(req, timeout=30).read())
            assert got["stdout"] == "5\n", got

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency * 2) as ex:
            list(ex.map(once, range(n)))
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--json", "--out", dest="out", default="benchmarks/results/sandbox.json",
                   help="write the figures here")
    a = p.parse_args()
    naive(10, a.concurrency)  # warm caches
    t_naive, t_runner, t_service = naive(a.n, a.concurrency), runner(a.n, a.concurrency), service(a.n, a.concurrency)
    row = {"n": a.n, "concurrency": a.concurrency, "cores": os.cpu_count(),
           "naive_runs_per_s": a.n / t_naive, "isolated_runner_runs_per_s": a.n / t_runner,
           "service_runs_per_s": a.n / t_service,
           "service_vs_naive_ratio": t_naive / t_service,
           "overhead_ms_per_run_service": (t_service - t_naive) / a.n * 1000 * a.concurrency,
           "overhead_ms_per_run_runner": (t_runner - t_naive) / a.n * 1000 * a.concurrency}
    report(row, a.out)


if __name__ == "__main__":
    main()
