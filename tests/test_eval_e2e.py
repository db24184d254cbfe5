"""``python -m or1.eval`` on a warmed-up tiny model agrees with an independent vLLM evaluation of the
same model and prompts: vLLM called directly in this process, answers compared as strings.

Marked long: a warm-up (~30 s), the command's own Ray + vLLM start (~50 s) and a second engine here.
Run: ``.venv/bin/python -m pytest -m long tests/test_eval_e2e.py``.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.long

K, PROBLEMS = 16, 40


def test_eval_command_agrees_with_direct_vllm(tmp_path):
    from or1.data.arithmetic import generate_splits
    from or1.tiny import TinySpec, create_tiny_model

    train, val = generate_splits(340, PROBLEMS, max_operand=19, seed=1)
    model = create_tiny_model(tmp_path / "m", TinySpec(hidden_size=256), warmup_steps=400, warmup_rows=train,
                              warmup_lr=1e-3)  # greedy accuracy >= 0.5 (tests/test_tiny.py); sampled: lower
    for i, row in enumerate(val):
        row["data_source"] = "first_half" if i < PROBLEMS // 2 else "second_half"
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    out = tmp_path / "res" / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "or1.eval", f"model.path={model}", f"data.val_files=[{tmp_path / 'val.jsonl'}]",
         "data.max_prompt_length=16", f"eval.k={K}", "eval.max_response_length=8", f"eval.output={out}",
         "rollout.max_model_len=32", "rollout.dtype=float32", "rollout.enforce_eager=true",
         "rollout.gpu_memory_utilization=0.05", "rollout.cpu_kvcache_space_gib=1", "trainer.ray_num_cpus=2",
         "reward.num_workers=1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert set(summary) == {"first_half", "second_half", "all"} and summary["all"]["n"] == PROBLEMS
    assert f"avg@{K}" in proc.stdout and "second_half" in proc.stdout  # the table
    problems = [json.loads(line) for line in (tmp_path / "res" / "eval.problems.jsonl").read_text().splitlines()]
    assert len(problems) == PROBLEMS and all(p["n"] == K for p in problems)

    # the independent evaluation: vLLM directly, the tokenizer's chat template, exact string answers
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(model)
    llm = LLM(model=str(model), dtype="float32", max_model_len=32, enforce_eager=True, gpu_memory_utilization=0.05,
              seed=123)
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                       tokenize=False) for r in val]
    outputs = llm.generate(prompts, SamplingParams(n=K, temperature=1.0, max_tokens=8, seed=123), use_tqdm=False)
    accuracy = [sum(c.text.strip() == r["answer"] for c in o.outputs) / K for o, r in zip(outputs, val)]
    direct = sum(accuracy) / PROBLEMS

    ours = summary["all"][f"avg@{K}"]
    print(f"avg@{K}: or1.eval {ours:.4f}, direct vLLM {direct:.4f}")
    assert 0.1 < ours < 0.95, ours  # the warm-up taught something, not everything: the comparison has teeth
    # two independent estimates of the same mean from 640 samples each: the standard error of their
    # difference is at most sqrt(2 * 0.25 / 640) ~ 0.028 (less: problems differ in difficulty)
    assert abs(ours - direct) < 4 * (2 * 0.25 / (PROBLEMS * K)) ** 0.5, (ours, direct)
    for figures in summary.values():
        assert figures[f"pass@{K}"] >= figures[f"avg@{K}"]
