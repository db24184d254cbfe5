"""``python -m or1.report RUN_DIR``: a run's curves as PNG files and one HTML page, from
``RUN_DIR/metrics.jsonl`` alone (a running, finished or copied run; nothing else is read).

Writes ``RUN_DIR/report/<chart>.png`` and ``RUN_DIR/report/index.html``. Charts (each drawn when
its metrics are in the file): reward and accuracy; validation avg@k per data source; entropy and
its bonus coefficient; response length and truncation rate; online filter rates; seconds per
phase. ``--out DIR`` writes elsewhere.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

VAL_FIGURE = re.compile(r"^val/(?:(?P<source>.+)/)?(?P<kind>avg|pass)@(?P<k>\d+)$")


@dataclass
class Chart:
    name: str  # file name stem
    title: str
    left: list[tuple[str, str]]  # (metric key, label) on the left axis
    right: list[tuple[str, str]] | None = None  # on a second axis (another unit)
    left_label: str = ""
    right_label: str = ""


def read_metrics(path: Path) -> list[dict]:
    """Every record of ``metrics.jsonl`` (a torn last line, from a run killed mid-write, is skipped)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def charts_for(keys: set[str]) -> list[Chart]:
    """The charts this run's metrics can fill, in page order."""
    val = sorted((m.group("source") or "all", k) for k in keys if (m := VAL_FIGURE.match(k)) and m["kind"] == "avg")
    phases = sorted(k for k in keys if k.startswith("time/") and k not in ("time/step", "time/reward_slowest_item"))
    out = [
        Chart("reward", "Reward and accuracy", [("reward/mean", "reward (all samples)"), ("acc/mean", "accuracy"),
                                                ("train/acc", "accuracy (trained groups)"),
                                                ("val/acc", "validation accuracy")], left_label="mean"),
        Chart("validation", "Validation avg@k per data source",
              [(k, "all" if source == "all" else source) for source, k in val], left_label="avg@k"),
        Chart("entropy", "Entropy and its bonus coefficient",
              [("actor/entropy", "entropy (learner)"), ("rollout/entropy_estimate", "entropy (rollout estimate)")],
              [("actor/entropy_coef", "bonus coefficient")], "nats per token", "coefficient"),
        Chart("length", "Response length and truncation",
              [("response_length/mean", "mean length"), ("response_length/max", "max length")],
              [("response/truncated_frac", "truncated fraction")], "tokens", "fraction"),
        Chart("filter", "Online filter", [("filter/informative_frac", "groups with a signal"),
                                          ("filter/kept_frac", "groups kept")],
              [("filter/mastered_total", "prompts mastered")], "fraction", "prompts"),
        Chart("time", "Seconds per phase", [(k, k.removeprefix("time/")) for k in phases]
              + [("time/step", "whole step")], left_label="seconds"),
    ]
    return [c for c in out if any(k in keys for k, _ in c.left + (c.right or []))]


def derived(records: list[dict]) -> None:
    """Ratios the page shows that the run logs as counts."""
    for r in records:
        generated = r.get("filter/groups_generated")
        if isinstance(generated, (int, float)) and generated > 0 and "filter/groups_kept" in r:
            r["filter/kept_frac"] = r["filter/groups_kept"] / generated


def draw(chart: Chart, records: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key, label in chart.left:
        steps, values = series(records, key)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(chart.left_label)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if chart.right:
        twin = ax.twinx()
        for i, (key, label) in enumerate(chart.right):
            steps, values = series(records, key)
            if steps:
                twin.plot(steps, values, linestyle="--", color=f"C{len(chart.left) + i}", label=label)
        twin.set_ylabel(chart.right_label)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title(chart.title)
    fig.tight_layout()
    path = out / f"{chart.name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_rows(records: list[dict]) -> list[tuple[str, str]]:
    train = [r for r in records if "reward/mean" in r]
    rows = [("steps", str(train[-1]["step"]) if train else "0")]
    if train:
        total = sum(r.get("time/step", 0.0) for r in train)
        rows.append(("training time", f"{total / 3600:.2f} h ({total / len(train):.1f} s per step)"))
        rows.append(("reward, last step", f"{train[-1]['reward/mean']:.4f}"))
    vals = [r for r in records if "val/acc" in r]
    if vals:
        first, last = vals[0], vals[-1]
        for key in sorted(k for k in last if VAL_FIGURE.match(k)):
            before = f"{first[key]:.4f} at step {first['step']} -> " if key in first and first is not last else ""
            rows.append((key, f"{before}{last[key]:.4f} at step {last['step']}"))
    return rows


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the charts and the page; returns the page's path."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"{run_dir} has no metrics.jsonl: give a run directory (trainer.output_dir)")
    records = read_metrics(metrics)
    if not records:
        raise SystemExit(f"{metrics} holds no record yet")
    derived(records)
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    keys = {k for r in records for k in r}
    images = [draw(c, records, out) for c in charts_for(keys)]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary_rows(records))
    figures = "".join(f'<figure><img src="{p.name}" alt="{p.stem}"></figure>' for p in images)
    page = out / "index.html"
    page.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>or1 run: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin-bottom:1em}}
th,td{{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}} figure{{display:inline-block;margin:4px}}
img{{width:520px}}</style></head>
<body><h1>or1 run: {html.escape(str(run_dir))}</h1><table>{rows}</table>{figures}
<p>From {html.escape(str(metrics))} ({len(records)} records).</p></body></html>
""")
    return page


def main() -> None:
    p = argparse.ArgumentParser(description="PNG curves and an HTML page from a run's metrics.jsonl.")
    p.add_argument("run_dir", help="the run's trainer.output_dir")
    p.add_argument("--out", default=None, help="where to write (default: RUN_DIR/report)")
    a = p.parse_args()
    print(f"report: {write_report(a.run_dir, a.out)}")


if __name__ == "__main__":
    main()
