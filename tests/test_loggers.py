"""Metrics backends: JSONL always, TensorBoard readable, samples per step, a failing backend never
stops training, and wandb run identity across resume and init_from (fakes, milliseconds)."""

import json
import logging

import pytest

from or1 import metrics as metrics_module
from or1.metrics import MetricsLogger
from tests.fakes import config, make_trainer, mixed


def test_jsonl_is_always_written_and_tensorboard_holds_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(str(tmp_path), ["tensorboard"])  # no jsonl asked for: written anyway
    logger.log(1, {"reward/mean": 0.25, "val/aime24/avg@4": 0.5})
    logger.log(2, {"reward/mean": 0.75})
    logger.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]
    assert events.Scalars("val/aime24/avg@4")[0].value == 0.5


def test_a_failing_logger_warns_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    class Broken:
        def add_scalar(self, *args):
            raise OSError("disk full")

    def no_wandb(*args):
        raise RuntimeError("wandb cannot reach its service")

    monkeypatch.setattr(metrics_module, "_tensorboard_writer", lambda *a: Broken())
    monkeypatch.setattr(metrics_module, "_wandb_run", no_wandb)
    cfg = config(tmp_path, **{"trainer.loggers": ["console", "wandb", "tensorboard"], "trainer.total_steps": 3})
    with caplog.at_level(logging.WARNING, logger="or1"):
        trainer = make_trainer(cfg, mixed)
        trainer.fit()
    assert "logger wandb could not start (RuntimeError: wandb cannot reach its service)" in caplog.text
    assert caplog.text.count("logger tensorboard failed (OSError: disk full) and is switched off") == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_samples_are_spread_over_the_step_and_carry_their_scores(tmp_path):
    cfg = config(tmp_path, **{"trainer.log_samples": 3, "trainer.total_steps": 2})
    trainer = make_trainer(cfg, mixed)
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2]
    first = rows[:3]  # 2 prompts x 4 responses: samples 0, 4 (rounded 3.5) and 7
    assert [r["prompt_index"] for r in first] == [trainer.rollouts.calls[0]["prompts"][i] for i in (0, 1, 1)]
    for r in rows:
        assert r["correct"] == r["response"].startswith("1") and r["reward"] == float(r["correct"])
        assert r["response_tokens"] == len(r["response"]) and r["data_source"] == "math"
        # mixed: 2 of 4 right, A = +-0.5 / std (Bessel) = +-0.5 / sqrt(1/3)
        assert r["advantage"] == pytest.approx((1 if r["correct"] else -1) * 0.5 / (1 / 3) ** 0.5, abs=1e-4)


def test_wandb_run_id_continues_on_resume_and_is_new_after_init_from(tmp_path):
    first = make_trainer(config(tmp_path / "a", **{"trainer.total_steps": 1}), mixed)
    first.fit()
    ckpt = first.checkpoints.latest()
    resumed = make_trainer(config(tmp_path / "a", **{"trainer.total_steps": 2}), mixed, resume_from=ckpt)
    assert resumed.run_id == first.run_id
    next_stage = make_trainer(config(tmp_path / "b", **{"trainer.total_steps": 2}), mixed, resume_from=ckpt)
    assert next_stage.run_id != first.run_id and next_stage.step == 1


def test_report_draws_the_charts_the_metrics_can_fill(tmp_path):
    import matplotlib.image

    from or1.report import write_report

    logger = MetricsLogger(str(tmp_path), ["jsonl"])
    logger.log(0, {"val/acc": 0.2, "val/avg@4": 0.2, "val/aime24/avg@4": 0.1, "val/aime25/avg@4": 0.3})
    for step in range(1, 6):
        logger.log(step, {"reward/mean": step / 10, "acc/mean": step / 10, "actor/entropy": 1 - step / 10,
                          "time/generate": 2.0, "time/step": 3.0})
    logger.log(5, {"val/acc": 0.4, "val/avg@4": 0.4, "val/aime24/avg@4": 0.3, "val/aime25/avg@4": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "reward/me')  # a run killed mid-write
    page = write_report(tmp_path)
    assert sorted(p.stem for p in page.parent.glob("*.png")) == ["entropy", "reward", "time", "validation"]
    rgb = matplotlib.image.imread(page.parent / "validation.png")[..., :3]
    assert ((rgb.max(-1) - rgb.min(-1)) > 0.3).mean() > 0.002
    text = page.read_text()
    assert "val/aime24/avg@4" in text and "0.1000 at step 0 -&gt; 0.3000 at step 5" in text
