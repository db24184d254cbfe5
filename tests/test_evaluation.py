"""avg@k, pass@k and ``python -m or1.eval``'s logic, against hand-computed values (fakes, milliseconds)."""

import json
from math import comb

import pytest

from or1.data.dataset import PromptDataset
from or1.data.rows import load_rows
from or1.eval import check_eval_config, evaluate, problems_file
from or1.evaluation import ProblemResult, pass_at_k, summarize, table
from or1.tiny import build_tokenizer
from or1.config import ConfigError
from tests.fakes import ExactRewards, config
from tests.test_data_filter import CountRollouts


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 2, 1 - 3 / 10),   # 1 - C(3,2)/C(5,2)
    (6, 1, 3, 1 - 10 / 20),  # 1 - C(5,3)/C(6,3)
    (4, 1, 1, 0.25),         # pass@1 is the accuracy
    (10, 0, 5, 0.0),
    (3, 2, 2, 1.0),          # fewer wrong answers than draws: a draw always holds a right one
    (8, 8, 8, 1.0),
    (8, 3, 8, 1.0),          # n = k: 1 if any is right
    (8, 0, 8, 0.0),
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_agrees_with_binomials_and_refuses_nonsense():
    for n, c, k in [(100, 3, 10), (64, 17, 32), (200, 1, 1)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 2)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_summary_per_source_and_overall():
    problems = [ProblemResult(0, "aime24", 4, 1, 0.25, 10.0, 0.0), ProblemResult(1, "aime24", 4, 0, 0.0, 20.0, 0.5),
                ProblemResult(2, "aime25", 4, 4, 1.0, 30.0, 0.0)]
    s = summarize(problems, 4)
    assert s["aime24"] == {"avg@4": 0.125, "pass@4": 0.5, "n": 2, "response_tokens_mean": 15.0,
                           "truncated_frac": 0.25}
    assert s["aime25"]["avg@4"] == 1.0 and s["aime25"]["pass@4"] == 1.0
    assert s["all"]["avg@4"] == pytest.approx(5 / 12) and s["all"]["pass@4"] == pytest.approx(2 / 3)
    assert list(s) == ["aime24", "aime25", "all"]
    for figures in s.values():
        assert figures["pass@4"] >= figures["avg@4"]
    lines = table(s, 4).splitlines()
    assert lines[0].split() == ["data_source", "problems", "avg@4", "pass@4", "mean_len", "truncated"]
    assert lines[-1].split()[:4] == ["all", "3", "0.4167", "0.6667"]


def test_evaluate_writes_the_summary_and_every_problem(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": "1", "data_source": "a" if i < 4 else "b"} for i in range(6)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tmp_path, **{"data.val_files": [str(tmp_path / "val.jsonl")], "eval.k": 4,
                              "eval.output": str(tmp_path / "res" / "eval.json")})
    tok = build_tokenizer()
    data = PromptDataset.from_rows(load_rows(cfg.data, cfg.data.val_files, "data.val_files"), tok, 8)
    correct = {0: 0, 1: 1, 2: 2, 3: 4, 4: 3, 5: 0}
    engines = CountRollouts(tok, correct)
    summary = evaluate(cfg, data, engines, ExactRewards(), tok, max_tokens=8)
    assert engines.calls[0]["n"] == 4 and engines.calls[0]["max_tokens"] == 8
    assert summary == json.loads((tmp_path / "res" / "eval.json").read_text())
    assert summary["a"]["avg@4"] == pytest.approx((0 + 1 + 2 + 4) / 16) and summary["a"]["pass@4"] == 0.75
    assert summary["b"]["avg@4"] == pytest.approx(3 / 8) and summary["b"]["pass@4"] == 0.5
    assert summary["all"]["n"] == 6 and summary["all"]["avg@4"] == pytest.approx(10 / 24)
    problems = [json.loads(line) for line in problems_file(tmp_path / "res" / "eval.json").read_text().splitlines()]
    assert [(p["correct"], p["accuracy"]) for p in problems] == [(c, c / 4) for c in correct.values()]
    assert problems[1]["where"] == f"{tmp_path / 'val.jsonl'}:2" and problems[4]["data_source"] == "b"


@pytest.mark.parametrize("overrides, message", [
    ({"eval.k": 0}, "eval.k must be >= 1"),
    ({"data.val_files": []}, "data.val_files is empty"),
    ({"eval.max_response_length": 1000}, "cannot hold data.max_prompt_length"),
])
def test_inconsistent_eval_settings_are_refused(tmp_path, overrides, message):
    cfg = config(tmp_path, **{"data.val_files": ["v.jsonl"], **overrides})
    with pytest.raises(ConfigError, match=message):
        check_eval_config(cfg)


def test_the_model_to_evaluate_is_found_in_a_run_or_a_directory(tmp_path):
    from or1.eval import resolve_model

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model(str(hf), tmp_path) == str(hf)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    assert resolve_model(str(run), tmp_path) == str(run / "final")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"model.path=.*empty.*nor a Hugging Face model directory"):
        resolve_model(str(tmp_path / "empty"), tmp_path)
    assert resolve_model("org/model", tmp_path) == "org/model"  # a hub name: checked later
