"""The tiny recipe on-policy (``trainer.off_policy_steps=0``) and one-step off-policy (``=1``), side by
side: steps per second, validation accuracy after the same steps, and the wall-clock to a
validation accuracy.

Both runs start from the same warmed-up tiny model and data (created once in the work directory by
the first run) and run ``python -m or1.train`` with the tiny recipe, one after the other on the
same machine, validating every ``--val-every`` steps. Wall-clock counts the training loop (every
step's ``time/step`` plus validations), not start-up.

    .venv/bin/python benchmarks/off_policy.py [--steps 200] [--val-every 20] [--target-acc 0.6] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.report import report  # noqa: E402


def train(work: str, name: str, steps: int, val_every: int, *overrides: str) -> list[dict]:
    out = os.path.join(work, name)
    shared = os.path.join(work, "p0")  # the first run creates the tiny model and data, the others reuse them
    reuse = [] if name == "p0" else [f"model.path={shared}/tiny_model", f"data.train_files=[{shared}/data/train.jsonl]",
                                     f"data.val_files=[{shared}/data/val.jsonl]"]
    cmd = [sys.executable, "-m", "or1.train", f"trainer.output_dir={out}", f"trainer.total_steps={steps}",
           f"trainer.val_every={val_every}", "trainer.save_final=false", *reuse, *overrides]
    with open(os.path.join(work, f"{name}.log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def summary(records: list[dict], target: float) -> dict:
    steps = [r for r in records if "time/step" in r]
    seconds = sum(r["time/step"] for r in steps)
    clock, reached = 0.0, None
    for r in records:
        clock += r.get("time/step", 0.0) + r.get("time/validate", 0.0)
        if reached is None and r.get("val/acc", 0.0) >= target:
            reached = (r["step"], clock)
    vals = {r["step"]: r["val/acc"] for r in records if "val/acc" in r}
    return {"steps_per_s": len(steps) / seconds, "step_s": seconds / len(steps), "val": vals,
            "reached_step": reached[0] if reached else None, "reached_s": reached[1] if reached else None,
            "generate_s": sum(r.get("time/generate", 0.0) for r in steps) / len(steps),
            "update_s": sum(r.get("time/update", 0.0) for r in steps) / len(steps),
            "overlap": sum(r.get("perf/overlap_frac", 0.0) for r in steps[1:]) / max(len(steps) - 1, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--target-acc", type=float, default=0.60)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--json", default="benchmarks/results/off_policy_tiny.json")
    args = p.parse_args()
    work = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="or1_off_policy_"))
    os.makedirs(work, exist_ok=True)
    on = summary(train(work, "p0", args.steps, args.val_every, "trainer.off_policy_steps=0"), args.target_acc)
    off = summary(train(work, "p1", args.steps, args.val_every, "trainer.off_policy_steps=1"), args.target_acc)
    last = max(on["val"])
    row = {
        "steps": args.steps, "on_steps_per_s": on["steps_per_s"], "off_steps_per_s": off["steps_per_s"],
        "speedup_steps_per_s": off["steps_per_s"] / on["steps_per_s"],
        "on_val_acc_last": on["val"][last], "off_val_acc_last": off["val"].get(last),
        f"on_s_to_val_{args.target_acc}": on["reached_s"], f"off_s_to_val_{args.target_acc}": off["reached_s"],
        f"on_step_to_val_{args.target_acc}": on["reached_step"],
        f"off_step_to_val_{args.target_acc}": off["reached_step"],
        "on_generate_s": on["generate_s"], "off_generate_s": off["generate_s"],
        "on_update_s": on["update_s"], "off_update_s": off["update_s"], "off_overlap_frac": off["overlap"],
        "on_val": on["val"], "off_val": off["val"],
    }
    report(row, args.json)


if __name__ == "__main__":
    main()
