"""``python -m or1.eval``: avg@k and pass@k of a model on ``data.val_files``, per data source.

    python -m or1.eval model.path=MODEL data.val_files=[aime24.parquet,aime25.parquet] data.layout=verl \\
        eval.k=32 eval.max_response_length=32768 rollout.max_model_len=34816 eval.output=results/aime.json

The configuration is training's (``recipe=NAME`` supplies model, data, rollout and reward
settings; any field can be overridden) plus ``eval.*`` (``or1/config.py``). MODEL is a Hugging Face
model directory, a run directory (its ``final/`` policy, else its latest checkpoint), or a
checkpoint directory; a checkpoint is first exported to a Hugging Face directory beside
``eval.output``. Every problem gets ``eval.k`` responses (vLLM, ``eval.temperature``,
``eval.top_p``), scored by the configured rewards (routes included); ``or1.evaluation`` defines
the figures. Output: a table on stdout, ``eval.output`` (``{"<data_source>": {"avg@k", "pass@k",
"n", ...}, ..., "all": {...}}`` with k's value in the keys) and ``<name>.problems.jsonl`` beside it
(one line per problem: file and row, data source, correct count, accuracy, mean length).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


from or1.config import ConfigError, OR1Config
from or1.data.dataset import PromptDataset
from or1.evaluation import score_problems, summarize, table
from or1.trainer import generate_and_score, longest_response_limit, sampling_seeds

log = logging.getLogger("or1")

EVAL_STREAM = 1 << 17  # sampling seeds of their own (training uses 0, 1, ..., validation 1 << 16)


def check_eval_config(cfg: OR1Config) -> int:
    """Refuse inconsistent evaluation settings; returns the response limit in tokens."""
    e, r = cfg.eval, cfg.rollout
    errors = []
    if e.k < 1:
        errors.append(f"eval.k must be >= 1, got {e.k}")
    if e.temperature < 0 or not 0 < e.top_p <= 1:
        errors.append(f"eval.temperature must be >= 0 and eval.top_p in (0, 1], got {e.temperature} and {e.top_p}")
    if not e.output:
        errors.append("eval.output is empty: give the JSON file to write")
    if not cfg.data.val_files:
        errors.append("data.val_files is empty: give the problems to evaluate on")
    max_tokens = e.max_response_length or r.val_max_response_length or longest_response_limit(cfg)
    if cfg.data.max_prompt_length + max_tokens > r.max_model_len:
        errors.append(f"rollout.max_model_len={r.max_model_len} cannot hold data.max_prompt_length + the response "
                      f"limit (eval.max_response_length, else rollout.val_max_response_length, else the longest "
                      f"stage's) = {cfg.data.max_prompt_length + max_tokens}")
    if errors:
        raise ConfigError("inconsistent evaluation settings:\n  " + "\n  ".join(errors))
    if e.k > 1 and e.temperature == 0:
        log.warning("eval.k=%d at eval.temperature=0: greedy decoding gives the same answer %d times", e.k, e.k)
    return max_tokens


def resolve_model(path: str, export_dir: Path) -> str:
    """A Hugging Face model directory for ``path``: itself; a run directory's ``final/``; or a
    checkpoint (a run's latest, or the one named) exported into ``export_dir`` (once)."""
    from or1.export import ExportError, export_checkpoint, find_checkpoint, is_hf_model_dir

    p = Path(path)
    if not p.exists():
        return path  # a hub name: check_model_path decides
    if is_hf_model_dir(p):
        return str(p)
    if is_hf_model_dir(p / "final"):
        log.info("evaluating the run's final policy %s", p / "final")
        return str(p / "final")
    try:
        checkpoint = find_checkpoint(p)
    except ExportError as exc:
        raise ConfigError(f"model.path={path!r}: {exc}") from None
    out = export_dir / f"exported_{checkpoint.parent.parent.name}_{checkpoint.name}"
    if not is_hf_model_dir(out):
        log.info("exporting checkpoint %s to %s", checkpoint, out)
        export_checkpoint(checkpoint, out)
    return str(out)


def evaluate(cfg: OR1Config, data: PromptDataset, rollouts, rewards, tokenizer, max_tokens: int) -> dict:
    """Sample, score, summarise and write ``eval.output`` and the per-problem JSONL; returns the
    summary. ``rollouts.generate`` and ``rewards.score`` are the trainer's components (tests: fakes)."""
    e = cfg.eval
    seeds = sampling_seeds(cfg.trainer.seed, 0, len(data), EVAL_STREAM)
    log.info("eval: %d problems x %d samples, temperature %g, up to %d tokens each", len(data), e.k, e.temperature,
             max_tokens)
    samples, scored = generate_and_score(rollouts, rewards, tokenizer, data, list(range(len(data))), e.k,
                                         e.temperature, e.top_p, max_tokens, seeds)
    if scored.items and scored.failed == scored.items:
        raise RuntimeError(f"every reward failed; no figure would mean anything. The first failure: "
                           f"{scored.first_failure}")
    if scored.failed:
        log.warning("eval: %d of %d reward items failed and count as wrong: %s", scored.failed, scored.items,
                    scored.first_failure)
    problems = score_problems(samples, scored.correct, scored.rewards, e.k,
                              [row.get("data_source", "") for row in data.rows], [str(r) for r in data.refs])
    summary = summarize(problems, e.k)
    out = Path(e.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    problems_path = problems_file(out)
    problems_path.write_text("".join(json.dumps(p.record()) + "\n" for p in problems))
    print(table(summary, e.k), flush=True)
    log.info("eval: summary in %s, per-problem results in %s", out, problems_path)
    return summary


def problems_file(output: Path) -> Path:
    return output.with_name(output.stem + ".problems.jsonl")


def build_and_run(cfg: OR1Config) -> dict:
    """Every cheap check, the model resolved, then ``evaluate`` on engines started when needed."""
    from or1.data.rows import load_rows
    from or1.startup import make_paths_absolute, quiet_third_party, run_on_engines

    max_tokens = check_eval_config(cfg)
    quiet_third_party(cfg)
    cfg.eval.output = os.path.abspath(cfg.eval.output)
    cfg.model.path = resolve_model(cfg.model.path, Path(cfg.eval.output).parent)
    make_paths_absolute(cfg)
    return run_on_engines(cfg, lambda: load_rows(cfg.data, cfg.data.val_files, "data.val_files"), "data.val_files",
                          str(Path(cfg.eval.output).parent),
                          lambda data, engines, rewards, tokenizer: evaluate(cfg, data, engines, rewards, tokenizer,
                                                                             max_tokens))


def main() -> None:
    from or1.train import command_main

    output = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("eval.output=")), "eval.json")
    command_main(build_and_run, str(Path(output).parent.resolve()), "hydra.output_subdir=null")


if __name__ == "__main__":
    main()
