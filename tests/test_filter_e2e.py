"""``python -m or1.data.filter`` on the real stack (vLLM engine in a Ray actor, the reward pool) with
the tiny model, on a Parquet file in verl's layout: killed after its first round, then resumed."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from or1.checkpoint import FAULT_ENV

pytestmark = pytest.mark.long  # two starts of the command: two vLLM engines (~50 s each on 2 cores)

PROMPTS, K, ROUND = 24, 4, 8


def first_byte_even(response: str, sample: dict) -> dict:
    """A reward the random tiny model earns about half the time: its first character's code is even."""
    right = float(bool(response) and ord(response[0]) % 2 == 0)
    return {"score": right, "acc": right}


def filter_command(model, data, out, reward_fn):
    return [sys.executable, "-m", "or1.data.filter", f"model.path={model}", f"data.train_files=[{data}]",
            "data.layout=verl", "data.max_prompt_length=16", f"filter.k={K}", "filter.low=0.25", "filter.high=1",
            f"filter.chunk_prompts={ROUND}", f"filter.output_dir={out}", "rollout.max_response_length=4",
            "rollout.max_model_len=64", "rollout.dtype=float32", "rollout.enforce_eager=true",
            "rollout.gpu_memory_utilization=0.05", "rollout.cpu_kvcache_space_gib=1", "trainer.ray_num_cpus=2",
            f"reward.fn={reward_fn}", "reward.num_workers=1"]


def test_filter_on_verl_parquet_is_killed_then_resumes(tmp_path, tiny_model):
    rows = [{"data_source": "arith", "prompt": [{"role": "user", "content": f"{i}+{i + 1}"}], "ability": "math",
             "reward_model": {"ground_truth": json.dumps([str(2 * i + 1)]), "style": "rule"},
             "extra_info": {"index": i}} for i in range(PROMPTS)]
    data = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    out = tmp_path / "filtered"
    cmd = filter_command(tiny_model, data, out, f"{os.path.abspath(__file__)}:first_byte_even")

    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, FAULT_ENV: "filter_after_round:1"})
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    first = (out / "accuracy.jsonl").read_text().splitlines()
    assert len(first) == ROUND

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert f"{PROMPTS} prompts, {ROUND} already scored" in log and "ETA" in log
    lines = (out / "accuracy.jsonl").read_text().splitlines()
    assert lines[:ROUND] == first  # the first round was not redone
    records = [json.loads(line) for line in lines]
    assert sorted(r["row"] for r in records) == list(range(PROMPTS))
    assert {r["k"] for r in records} == {K} and {r["data_source"] for r in records} == {"arith"}
    assert len({r["correct"] for r in records}) >= 3  # the reward spreads: the thresholds have work to do

    kept = pq.read_table(out / "kept" / "train.parquet")
    assert kept.schema == pq.read_table(data).schema  # the input's format, nested fields included
    expected = [r["row"] for r in sorted(records, key=lambda r: r["row"]) if 0.25 < r["accuracy"] < 1]
    assert [r["extra_info"]["index"] for r in kept.to_pylist()] == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == len(expected) and summary["scored"] == PROMPTS

    # other thresholds on a finished filter: the kept subset is rewritten, no engine is started
    narrow = subprocess.run([*cmd, "filter.low=0.5", "filter.high=0.8"], capture_output=True, text=True, timeout=300)
    assert narrow.returncode == 0, narrow.stdout[-3000:] + narrow.stderr[-3000:]
    assert "engine(s) ready" not in narrow.stdout + narrow.stderr
    expected = [r["row"] for r in sorted(records, key=lambda r: r["row"]) if 0.5 < r["accuracy"] < 0.8]
    assert [r["extra_info"]["index"] for r in pq.read_table(out / "kept" / "train.parquet").to_pylist()] == expected
