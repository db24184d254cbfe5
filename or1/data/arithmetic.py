"""Synthetic arithmetic task: the tiny CPU recipe's data.

Each row is ``{"prompt", "answer", "data_source"}``, the schema every or1 dataset uses. The task
is two-operand integer addition or subtraction; the ground truth is the exact integer result, so
the math verifier scores it. Generation is deterministic in ``seed`` and train/validation never
share a problem (validation problems are held out by construction, not by luck).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DATA_SOURCE = "synthetic/arithmetic"
CODE_DATA_SOURCE = "synthetic/arithmetic_code"


def make_problem(a: int, b: int, op: str) -> dict:
    result = a + b if op == "+" else a - b
    return {"prompt": f"{a}{op}{b}", "answer": str(result), "data_source": DATA_SOURCE}


def as_code_problem(row: dict) -> dict:
    """The same problem for the code verifier: a program that prints the result (no input)."""
    return {**row, "data_source": CODE_DATA_SOURCE, "tests": {"inputs": [""], "outputs": [row["answer"] + "\n"]}}


def generate_splits(
    n_train: int, n_val: int, max_operand: int = 99, seed: int = 0, ops: str = "+"
) -> tuple[list[dict], list[dict]]:
    """Draw ``n_train + n_val`` distinct problems and split them; raises if the space is too small."""
    space = [(a, b, op) for op in ops for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if n_train + n_val > len(space):
        raise ValueError(
            f"asked for {n_train + n_val} distinct problems but only {len(space)} exist "
            f"with max_operand={max_operand} and ops={ops!r}"
        )
    rng = random.Random(seed)
    picked = rng.sample(space, n_train + n_val)
    rows = [make_problem(a, b, op) for a, b, op in picked]
    return rows[:n_train], rows[n_train:]


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)  # a reader never sees a half-written file


def write_splits(out_dir: str | Path, n_train: int, n_val: int, max_operand: int = 99,
                 seed: int = 0, ops: str = "+") -> tuple[Path, Path]:
    train, val = generate_splits(n_train, n_val, max_operand, seed, ops)
    out_dir = Path(out_dir)
    write_jsonl(train, out_dir / "train.jsonl")
    write_jsonl(val, out_dir / "val.jsonl")
    return out_dir / "train.jsonl", out_dir / "val.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description="Write the synthetic arithmetic train/val jsonl files.")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--max-operand", type=int, default=99)
    p.add_argument("--ops", default="+")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    train, val = write_splits(a.out, a.n_train, a.n_val, a.max_operand, a.seed, a.ops)
    print(f"wrote {train} and {val}")


if __name__ == "__main__":
    main()
