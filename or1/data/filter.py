"""``python -m or1.data.filter``: the offline difficulty filter, run once before training.

OR1 trains only on prompts its starting model solves sometimes: a prompt solved by none or all of
k samples gives a group of equal rewards, hence no gradient. This command samples ``filter.k``
responses per prompt with vLLM (``rollout.*``: OR1 samples at temperature 1), scores them with the
configured rewards (``reward.*``), and writes to ``filter.output_dir``:

- ``accuracy.jsonl``: one record per scored prompt: its identity (``file``, ``row``,
  ``prompt_sha1``), ``data_source``, ``accuracy`` (correct / k), ``correct``, ``k``, mean response
  length and truncated fraction;
- ``kept/<file name>``: for every input file, its rows with ``filter.low < accuracy < filter.high``
  in the input's own format (JSONL lines copied verbatim, Parquet with its schema, a saved dataset
  with its features), ready for ``data.train_files``;
- ``summary.json``: counts (read, bad, duplicates, too long, scored, kept, per data source) and an
  accuracy histogram.

Usage: ``python -m or1.data.filter [recipe=NAME] model.path=DIR data.train_files=[...]
filter.k=16 filter.output_dir=DIR`` (a recipe supplies model, data, rollout and reward settings).

Resumable: scored prompts are saved after every round of ``filter.chunk_prompts`` prompts; a
filter run again into the same directory scores only what is left (the same data and settings are
checked first). Progress and an ETA are logged after every round.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from or1.checkpoint import FAULT_ENV
from or1.config import ConfigError, OR1Config
from or1.data.dataset import PromptDataset
from or1.data.rows import DataReport, prompt_hash
from or1.data.sources import DataError, write_subset
from or1.trainer import generate_and_score
from or1.workers.rollout import by_prompt

log = logging.getLogger("or1")

ACCURACY_FILE, SETTINGS_FILE, SUMMARY_FILE, KEPT_DIR = "accuracy.jsonl", "settings.json", "summary.json", "kept"
SEED_STREAM = 0xF17  # the filter's sampling seeds never coincide with training's streams


def is_kept(accuracy: float, low: float, high: float) -> bool:
    """OR1's offline filter: keep a prompt iff ``low < accuracy < high`` (strictly)."""
    return low < accuracy < high


def prompt_seed(seed: int, row_hash: str) -> int:
    """A prompt's vLLM seed: a pure function of the run seed and the prompt, so an interrupted and
    resumed filter samples each prompt as an uninterrupted one would."""
    return int(np.random.default_rng([seed, SEED_STREAM, int(row_hash, 16)]).integers(0, 2**31 - 1))


def check_filter_config(cfg: OR1Config) -> int:
    """Refuse inconsistent filter settings; returns the response limit in tokens."""
    f, r = cfg.filter, cfg.rollout
    errors = []
    if not f.output_dir:
        errors.append("filter.output_dir is not set: give the directory for accuracy.jsonl and the kept subset")
    if f.k < 1:
        errors.append(f"filter.k must be >= 1, got {f.k}")
    if not 0 <= f.low < f.high <= 1:
        errors.append(f"filter.low and filter.high must satisfy 0 <= low < high <= 1 (kept: low < accuracy < high), "
                      f"got low={f.low} high={f.high}")
    if f.chunk_prompts < 1:
        errors.append(f"filter.chunk_prompts must be >= 1, got {f.chunk_prompts}")
    max_tokens = f.max_response_length or r.max_response_length
    if cfg.data.max_prompt_length + max_tokens > r.max_model_len:
        errors.append(f"rollout.max_model_len={r.max_model_len} cannot hold data.max_prompt_length + the filter's "
                      f"response limit (filter.max_response_length or rollout.max_response_length) = "
                      f"{cfg.data.max_prompt_length + max_tokens}")
    if r.temperature < 0 or not 0 < r.top_p <= 1:
        errors.append(f"rollout.temperature must be >= 0 and rollout.top_p in (0, 1], got {r.temperature} and "
                      f"{r.top_p}")
    if f.k > 1 and r.temperature == 0:
        errors.append(f"rollout.temperature=0 samples the same response {f.k} times: the accuracy can only be 0 or 1 "
                      "(OR1 samples at temperature 1)")
    if errors:
        raise ConfigError("inconsistent filter settings:\n  " + "\n  ".join(errors))
    return max_tokens


def sampling_settings(cfg: OR1Config, max_tokens: int) -> dict[str, Any]:
    """What the accuracies depend on; a resumed filter must have the same."""
    reward = OmegaConf.to_container(OmegaConf.structured(cfg.reward), resolve=True, enum_to_str=True)
    return {"model": cfg.model.path, "k": cfg.filter.k, "temperature": cfg.rollout.temperature,
            "top_p": cfg.rollout.top_p, "max_response_length": max_tokens, "seed": cfg.trainer.seed,
            "instruction_suffix": cfg.data.instruction_suffix, "apply_chat_template": cfg.data.apply_chat_template,
            "reward": {k: reward[k] for k in ("fn", "terms", "routes")}}


class AccuracyFile:
    """``accuracy.jsonl``, appended a round at a time (one write, flushed and synced)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[tuple[str, int], dict]:
        """Records saved so far by (file, row). A last line cut by a kill mid-write is dropped (and
        cut from the file), so that round's prompts are scored again."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            log.warning("%s: dropping a partly written last record (the filter was stopped mid-write)", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        records = {}
        for line in complete.decode().splitlines():
            if line.strip():
                rec = json.loads(line)
                records[(rec["file"], rec["row"])] = rec
        return records

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


def check_same_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / SETTINGS_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        changed = [f"{k}: {saved.get(k)!r} then, {v!r} now" for k, v in settings.items() if saved.get(k) != v]
        if changed:
            raise ConfigError(f"filter.output_dir={str(out_dir)!r} holds a filter run with other settings ("
                              + "; ".join(changed) + "). Use the same settings to resume it, or another "
                              "filter.output_dir")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1) + "\n")


@dataclass
class FilterResult:
    records: list[dict]  # every prompt's accuracy record, in dataset order
    scored_now: int  # prompts scored by this run (the rest were resumed)
    kept_files: list[Path]


def run_filter(cfg: OR1Config, data: PromptDataset, rollouts, rewards, tokenizer, max_tokens: int,
               reports: list[DataReport] | None = None) -> FilterResult:
    """Score every prompt of ``data`` not yet in ``accuracy.jsonl`` and write the kept subset.

    ``rollouts.generate`` and ``rewards.score`` are the trainer's components (``or1.trainer``);
    tests pass fakes."""
    f, r = cfg.filter, cfg.rollout
    out_dir = Path(f.output_dir)
    check_same_settings(out_dir, sampling_settings(cfg, max_tokens))
    store = AccuracyFile(out_dir / ACCURACY_FILE)
    saved = store.load()
    hashes = [prompt_hash(row["prompt"]) for row in data.rows]
    records: list[dict | None] = []
    for ref, h in zip(data.refs, hashes):
        rec = saved.get((ref.file, ref.row))
        if rec is not None and rec["prompt_sha1"] != h:
            raise DataError(f"{ref}: its prompt is not the one scored in {store.path} (the data changed since); "
                            "use another filter.output_dir")
        records.append(rec)
    todo = [i for i, rec in enumerate(records) if rec is None]
    total = len(records)
    log.info("filter: %d prompts, %d already scored in %s, %d to score with k=%d (%d responses)", total,
             total - len(todo), out_dir, len(todo), f.k, len(todo) * f.k)
    t0, rounds = time.time(), 0
    for start in range(0, len(todo), f.chunk_prompts):
        chunk = todo[start:start + f.chunk_prompts]
        samples, scored = generate_and_score(rollouts, rewards, tokenizer, data, chunk, f.k, r.temperature, r.top_p,
                                             max_tokens, [prompt_seed(cfg.trainer.seed, hashes[i]) for i in chunk])
        groups = by_prompt(samples, f.k, len(chunk))
        if scored.items and scored.failed == scored.items:
            raise RuntimeError(f"every reward of a round of {len(chunk)} prompts failed; nothing is saved for them. "
                               f"The first failure: {scored.first_failure}")
        new = []
        for g, (i, members) in enumerate(zip(chunk, groups)):
            correct = int(scored.correct[g * f.k:(g + 1) * f.k].sum().item())
            ref, row = data.refs[i], data.rows[i]
            new.append({"file": ref.file, "row": ref.row, "prompt_sha1": hashes[i],
                        "data_source": row.get("data_source", ""), "accuracy": correct / f.k, "correct": correct,
                        "k": f.k, "response_tokens_mean": float(np.mean([len(s.token_ids) for s in members])),
                        "truncated_frac": float(np.mean([s.truncated for s in members]))})
        store.append(new)
        for i, rec in zip(chunk, new):
            records[i] = rec
        rounds += 1
        done_now = start + len(chunk)
        elapsed = time.time() - t0
        rate = done_now / elapsed if elapsed > 0 else float("inf")
        eta = (len(todo) - done_now) / rate if rate > 0 else 0.0
        log.info("filter: %d/%d prompts scored (%d this run, %.2f prompts/s, ETA %s); %d kept so far",
                 total - len(todo) + done_now, total, done_now, rate, _duration(eta),
                 sum(is_kept(rec["accuracy"], f.low, f.high) for rec in records if rec is not None))
        if os.environ.get(FAULT_ENV) == f"filter_after_round:{rounds}":
            os.kill(os.getpid(), signal.SIGKILL)  # tests: a filter killed after this round was saved
    final = [rec for rec in records if rec is not None]
    kept_files = write_kept(data, final, out_dir, f.low, f.high)
    write_summary(out_dir / SUMMARY_FILE, cfg, final, reports or ([data.report] if data.report else []), kept_files)
    return FilterResult(final, len(todo), kept_files)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def kept_names(files: list[str]) -> dict[str, str]:
    """Each input file's name under ``kept/``: its own name, numbered when two inputs share one."""
    names = [Path(p).name for p in files]
    clashes = {n for n, c in Counter(names).items() if c > 1}
    return {p: (f"{i:02d}-{n}" if n in clashes else n) for i, (p, n) in enumerate(zip(files, names))}


def write_kept(data: PromptDataset, records: list[dict], out_dir: Path, low: float, high: float) -> list[Path]:
    """For every input file, its kept rows in its own format (an input with none kept: an empty file)."""
    files = list(dict.fromkeys(ref.file for ref in data.refs))
    if data.report is not None:
        files = list(dict.fromkeys(data.report.files + files))
    kept_rows: dict[str, list[int]] = {p: [] for p in files}
    for rec in records:
        if is_kept(rec["accuracy"], low, high):
            kept_rows[rec["file"]].append(rec["row"])
    names = kept_names(files)
    written = [write_subset(p, kept_rows[p], out_dir / KEPT_DIR / names[p]) for p in files]
    for p, path in zip(files, written):
        log.info("filter: kept %d rows of %s in %s", len(kept_rows[p]), p, path)
    return written


def write_summary(path: Path, cfg: OR1Config, records: list[dict], reports: list[DataReport],
                  kept_files: list[Path]) -> dict:
    f = cfg.filter
    kept = [r for r in records if is_kept(r["accuracy"], f.low, f.high)]
    by_source: dict[str, dict[str, int]] = {}
    for r in records:
        s = by_source.setdefault(r["data_source"], {"scored": 0, "kept": 0})
        s["scored"] += 1
        s["kept"] += is_kept(r["accuracy"], f.low, f.high)
    summary = {
        "k": f.k, "low": f.low, "high": f.high,
        "rows_read": sum(rep.rows_read for rep in reports),
        "bad_rows": sum(sum(rep.bad_rows.values()) for rep in reports),
        "duplicates": sum(rep.duplicates for rep in reports),
        "too_long": sum(rep.too_long for rep in reports),
        "scored": len(records), "kept": len(kept),
        "removed_never_solved": sum(r["accuracy"] <= f.low for r in records),
        "removed_always_solved": sum(r["accuracy"] >= f.high for r in records),
        "correct_histogram": {str(c): n for c, n in sorted(Counter(r["correct"] for r in records).items())},
        "by_data_source": by_source,
        "kept_files": [str(p) for p in kept_files],
    }
    path.write_text(json.dumps(summary, indent=1) + "\n")
    log.info("filter: %d of %d scored prompts kept (%d at or below filter.low=%g, %d at or above filter.high=%g); "
             "summary in %s", len(kept), len(records), summary["removed_never_solved"], f.low,
             summary["removed_always_solved"], f.high, path)
    return summary


# --- the command ----------------------------------------------------------------------------------
def build_and_run(cfg: OR1Config) -> FilterResult:
    """Every cheap check (settings, data, model path, rewards tried on a real row), then ``run_filter``
    with engines that start when first needed (none if nothing is left to score)."""
    from or1.startup import make_paths_absolute, quiet_third_party, read_data, run_on_engines

    max_tokens = check_filter_config(cfg)
    quiet_third_party(cfg)
    make_paths_absolute(cfg)
    cfg.filter.output_dir = os.path.abspath(cfg.filter.output_dir)
    # records name their file absolutely: a filter resumed from another directory finds them
    cfg.data.train_files = [os.path.abspath(p) for p in cfg.data.train_files]
    return run_on_engines(cfg, lambda: read_data(cfg, with_val=False)[0], "data.train_files", cfg.filter.output_dir,
                          lambda data, engines, rewards, tokenizer: run_filter(cfg, data, engines, rewards, tokenizer,
                                                                               max_tokens))


def main() -> None:
    from or1.train import command_main

    command_main(build_and_run, "${filter.output_dir}")


if __name__ == "__main__":
    main()
