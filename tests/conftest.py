import os
import socket

import pytest

# Ray's and vLLM's start-up noise is not what a failing test should show first.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random tiny Qwen2 (hidden 128, 2 heads of 64) with the character tokenizer."""
    from or1.tiny import TinySpec, create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TinySpec(hidden_size=128))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_training(out, *overrides: str, timeout: float = 1200) -> list[dict]:
    """``python -m or1.train`` into ``out`` with ``overrides``; its metrics.jsonl records (fails
    the test with the run's output tail if it did not finish). The console output is kept in
    ``out/console.txt``."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}  # set above for in-process tests
    proc = subprocess.run([sys.executable, "-m", "or1.train", *overrides, f"trainer.output_dir={out}"],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (out / "console.txt").write_text(proc.stdout + proc.stderr)  # what the user saw, for tests to read
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
