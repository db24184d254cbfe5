"""``python -m sandbox --host 127.0.0.1 --port PORT``: start the code-execution service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from inspect import signature

from aiohttp import web

from sandbox.runner import bwrap_available, isolation, shutdown_isolation, sweep_dead_services
from sandbox.server import Service, make_app


def main() -> None:
    p = argparse.ArgumentParser(description="Isolated code-execution service (HTTP/JSON).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-concurrency", type=int, default=os.cpu_count() or 2, help="programs running at once")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond that get 503")
    p.add_argument("--max-timeout-s", type=float, default=60.0)
    p.add_argument("--max-memory-mb", type=int, default=4096)
    p.add_argument("--max-body-mb", type=float, default=8.0, help="larger request bodies get 413")
    p.add_argument("--max-judge-s", type=float, default=600.0,
                   help="a judgement's whole time (all its tests); tests past it are not run (deadline_exceeded)")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="stop when this process is gone (a trainer that starts its own service passes its pid)")
    p.add_argument("--allow-weak-isolation", action="store_true",
                   help="run without bubblewrap when it cannot work here: rlimits, process groups, a "
                        "scrubbed environment and (as root) uid 65534 only; NO filesystem or network isolation")
    a = p.parse_args()
    sys.set_int_max_str_digits(0)  # call-based results and expected values may be huge integers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sandbox %(levelname)s %(message)s")
    problem = bwrap_available()
    if problem and not a.allow_weak_isolation:
        sys.exit(f"sandbox: refusing to start: {problem}. Install bubblewrap (apt-get install bubblewrap) on a "
                 f"host with user namespaces, or pass --allow-weak-isolation to accept the weak mode.")
    if problem:
        logging.warning("WEAK ISOLATION: %s; programs can read the host filesystem and reach the network", problem)
    swept = sweep_dead_services()
    if swept:
        logging.info("removed the leftover run directories of %d stopped service(s)", swept)
    layers = isolation()  # uid block and cgroups claimed; dead services' leftover processes killed
    if layers.seccomp is None:
        logging.warning("no seccomp filter for this architecture: ptrace and the rest are not blocked")
    logging.info("isolation: %s", layers.describe())
    service = Service(a.max_concurrency, a.max_queue, isolated=problem is None, max_timeout_s=a.max_timeout_s,
                      max_memory_mb=a.max_memory_mb, max_body_mb=a.max_body_mb, max_judge_s=a.max_judge_s)
    try:
        # a request whose client disconnected is cancelled, its program killed: aiohttp < 3.9 always
        # cancels (Debian bookworm's python3-aiohttp, in docker/Dockerfile.sandbox); 3.9+ only when asked
        cancel = {"handler_cancellation": True} if "handler_cancellation" in signature(web.run_app).parameters else {}
        web.run_app(make_app(service, a.parent_pid), host=a.host, port=a.port, print=lambda *_: None, **cancel)
    finally:
        shutdown_isolation()  # every run's processes killed, cgroups and the run area removed


if __name__ == "__main__":
    main()
