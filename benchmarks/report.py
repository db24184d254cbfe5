"""The one way benchmarks report: a two-column table on stdout and the same row as JSON."""

from __future__ import annotations

import json
import os


def report(row: dict, out_path: str) -> None:
    width = max(len(k) for k in row) + 2
    print(f"{'measure':{width}s} value")
    for k, v in row.items():
        if isinstance(v, float):  # small values (differences that should be ~0) in scientific notation
            print(f"{k:{width}s} {v:.2e}" if 0 < abs(v) < 0.01 else f"{k:{width}s} {v:.2f}")
        else:
            print(f"{k:{width}s} {v}")
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(row, f, indent=1)
