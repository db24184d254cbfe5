"""The offline difficulty filter's logic with fake engines and rewards, in milliseconds
(``tests/test_filter_e2e.py`` runs the real command on vLLM)."""

import json

import pytest

from or1.config import ConfigError
from or1.data.dataset import PromptDataset
from or1.data.filter import ACCURACY_FILE, KEPT_DIR, SUMMARY_FILE, check_filter_config, is_kept, run_filter
from or1.data.rows import load_rows
from or1.data.sources import DataError
from or1.tiny import build_tokenizer
from or1.workers.rollout import Sample
from tests.fakes import ExactRewards, config

K = 4


class CountRollouts:
    """Prompt "p<i>" gets ``correct[i]`` right answers ("1") of k, the rest wrong ("0"); records calls.
    ``fail_on_call``: that generate call raises (an interrupted filter)."""

    def __init__(self, tokenizer, correct: dict[int, int], fail_on_call: int | None = None):
        self.tok, self.correct, self.fail_on_call = tokenizer, correct, fail_on_call
        self.calls: list[dict] = []
        self.asleep = False

    def generate(self, prompt_token_ids, n, temperature, top_p, max_tokens, seeds):
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            raise KeyboardInterrupt("stopped")
        names = [self.tok.decode(ids).rstrip("=") for ids in prompt_token_ids]
        self.calls.append({"prompts": names, "seeds": dict(zip(names, seeds)), "n": n, "max_tokens": max_tokens})
        right, wrong = self.tok.encode("1"), self.tok.encode("0")
        return [Sample(g, right if j < self.correct[int(name[1:])] else wrong, [-0.1], False)
                for g, name in enumerate(names) for j in range(n)]


CORRECT = {i: i % (K + 1) for i in range(10)}  # prompts p0..p9 get 0,1,2,3,4,0,1,2,3,4 right of 4


def setup(tmp_path, out="out", **overrides):
    data_file = tmp_path / "train.jsonl"
    if not data_file.exists():
        data_file.write_text("".join(json.dumps({"prompt": f"p{i}", "answer": "1", "id": i}) + "\n"
                                     for i in range(10)))
    cfg = config(tmp_path, **{"data.train_files": [str(data_file)], "filter.k": K, "filter.chunk_prompts": 3,
                              "filter.output_dir": str(tmp_path / out), **overrides})
    tok = build_tokenizer()
    data = PromptDataset.from_rows(load_rows(cfg.data, cfg.data.train_files, "data.train_files"), tok, 8)
    return cfg, data, tok


def kept_ids(cfg) -> list[int]:
    path = f"{cfg.filter.output_dir}/{KEPT_DIR}/train.jsonl"
    return [json.loads(line)["id"] for line in open(path)]


def test_kept_subset_is_the_prompts_strictly_between_the_thresholds(tmp_path):
    cfg, data, tok = setup(tmp_path)
    result = run_filter(cfg, data, CountRollouts(tok, CORRECT), ExactRewards(), tok, max_tokens=8)
    records = [json.loads(line) for line in open(tmp_path / "out" / ACCURACY_FILE)]
    assert [(r["row"], r["accuracy"], r["correct"], r["k"]) for r in records] == \
        [(i + 1, CORRECT[i] / K, CORRECT[i], K) for i in range(10)]  # JSONL rows are line numbers
    assert all(r["file"] == cfg.data.train_files[0] and len(r["prompt_sha1"]) == 16 for r in records)
    assert kept_ids(cfg) == [1, 2, 3, 6, 7, 8]  # 1..3 of 4 right: never 0, never 4
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert (summary["scored"], summary["kept"], summary["removed_never_solved"], summary["removed_always_solved"]) \
        == (10, 6, 2, 2)
    assert summary["correct_histogram"] == {str(c): 2 for c in range(K + 1)}
    assert result.scored_now == 10

    cfg2, data2, _ = setup(tmp_path, out="narrow", **{"filter.low": 0.25, "filter.high": 0.75})
    run_filter(cfg2, data2, CountRollouts(tok, CORRECT), ExactRewards(), tok, max_tokens=8)
    assert kept_ids(cfg2) == [2, 7]  # exactly 0.5: 0.25 and 0.75 themselves are out
    assert not is_kept(0.25, 0.25, 0.75) and is_kept(0.5, 0.25, 0.75)


def test_an_interrupted_filter_resumes_without_rescoring(tmp_path):
    cfg, data, tok = setup(tmp_path)
    first = CountRollouts(tok, CORRECT, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        run_filter(cfg, data, first, ExactRewards(), tok, max_tokens=8)
    accuracy = tmp_path / "out" / ACCURACY_FILE
    assert len(accuracy.read_text().splitlines()) == 3  # the first round of 3 prompts was saved
    with open(accuracy, "a") as f:
        f.write('{"file": "torn mid-wri')  # a kill during the next write
    second = CountRollouts(tok, CORRECT)
    result = run_filter(cfg, data, second, ExactRewards(), tok, max_tokens=8)
    assert [p for c in second.calls for p in c["prompts"]] == [f"p{i}" for i in range(3, 10)]
    assert result.scored_now == 7 and len(result.records) == 10
    records = [json.loads(line) for line in accuracy.read_text().splitlines()]
    assert [r["row"] for r in records] == list(range(1, 11))  # each prompt once; the torn line is gone
    assert kept_ids(cfg) == [1, 2, 3, 6, 7, 8]

    # the seeds are the prompts', not the rounds': an uninterrupted filter samples with the same ones
    whole_cfg, whole_data, _ = setup(tmp_path, out="whole", **{"filter.chunk_prompts": 10})
    whole = CountRollouts(tok, CORRECT)
    run_filter(whole_cfg, whole_data, whole, ExactRewards(), tok, max_tokens=8)
    resumed_seeds = {**first.calls[0]["seeds"], **{k: v for c in second.calls for k, v in c["seeds"].items()}}
    assert resumed_seeds == whole.calls[0]["seeds"] and len(set(resumed_seeds.values())) == 10

    # a finished filter run again scores nothing and writes the same subset
    again = CountRollouts(tok, CORRECT)
    assert run_filter(cfg, data, again, ExactRewards(), tok, max_tokens=8).scored_now == 0 and not again.calls


def test_resuming_with_other_settings_or_data_is_refused(tmp_path):
    cfg, data, tok = setup(tmp_path)
    run_filter(cfg, data, CountRollouts(tok, CORRECT), ExactRewards(), tok, max_tokens=8)
    other_k, data_k, _ = setup(tmp_path, **{"filter.k": 8})
    with pytest.raises(ConfigError, match=r"holds a filter run with other settings \(k: 4 then, 8 now\)"):
        run_filter(other_k, data_k, CountRollouts(tok, CORRECT), ExactRewards(), tok, max_tokens=8)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": f"p{9 - i}", "answer": "1", "id": i}) + "\n"
                                                  for i in range(10)))
    cfg2, changed, _ = setup(tmp_path)
    with pytest.raises(DataError, match=r"train.jsonl:1: its prompt is not the one scored"):
        run_filter(cfg2, changed, CountRollouts(tok, CORRECT), ExactRewards(), tok, max_tokens=8)


def test_every_reward_failing_saves_nothing(tmp_path):
    cfg, data, tok = setup(tmp_path)
    rewards = ExactRewards()
    rewards.fail = True
    with pytest.raises(RuntimeError, match="every reward of a round of 3 prompts failed"):
        run_filter(cfg, data, CountRollouts(tok, CORRECT), rewards, tok, max_tokens=8)
    assert not (tmp_path / "out" / ACCURACY_FILE).exists()


@pytest.mark.parametrize("overrides, message", [
    ({"filter.output_dir": ""}, "filter.output_dir is not set"),
    ({"filter.low": 0.5, "filter.high": 0.5}, "0 <= low < high <= 1"),
    ({"filter.k": 0}, "filter.k must be >= 1"),
    ({"filter.max_response_length": 100}, "cannot hold data.max_prompt_length"),
    ({"rollout.temperature": 0.0}, "samples the same response 4 times"),
])
def test_inconsistent_filter_settings_are_refused(tmp_path, overrides, message):
    cfg = config(tmp_path, **{"filter.k": 4, "filter.output_dir": str(tmp_path / "o"), **overrides})
    with pytest.raises(ConfigError, match=message):
        check_filter_config(cfg)
