"""Data formats, field mapping, bad rows, dedup and length filtering: real files, in milliseconds."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from or1.config import DataConfig
from or1.data.dataset import PromptDataset, render_prompt
from or1.data.rows import _MISSING, load_rows, lookup, normalize_answer, prompt_text
from or1.data.sources import DataError, write_subset
from or1.rewards import math as math_reward
from or1.tiny import build_tokenizer


def data_config(**overrides) -> DataConfig:
    cfg = OmegaConf.structured(DataConfig)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return OmegaConf.to_object(cfg)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def verl_row(question, ground_truth, source="math-src", ability="math", index=0):
    """A row as Skywork-OR1-RL-Data stores it (verl's layout)."""
    return {"data_source": source, "prompt": [{"content": question, "role": "user"}], "ability": ability,
            "reward_model": {"ground_truth": ground_truth, "style": "rule"},
            "extra_info": {"index": index, "model_difficulty": {"DeepSeek-R1-Distill-Qwen-7B": 7}}}


CODE_TESTS = {"inputs": ["1 2\n"], "outputs": ["3\n"], "fn_name": None}


def write_verl_parquet(path):
    rows = [verl_row("What is 1+1?", json.dumps(["2", "2.0"])),
            verl_row("Add the numbers.", json.dumps(CODE_TESTS), source="LeetCode", ability="code", index=1),
            verl_row("AIME style", "204", index=2)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_verl_parquet_loads_with_one_setting(tmp_path):
    f = write_verl_parquet(tmp_path / "skywork.parquet")
    data = load_rows(data_config(layout="verl"), [f], "data.train_files")
    math_row, code_row, aime_row = data.rows
    assert math_row["prompt"] == [{"role": "user", "content": "What is 1+1?"}]
    assert math_row["answer"] == ["2", "2.0"] and "tests" not in math_row
    assert math_row["data_source"] == "math-src" and math_row["ability"] == "math"
    assert math_row["extra_info"]["model_difficulty"]["DeepSeek-R1-Distill-Qwen-7B"] == 7  # kept for user rewards
    assert code_row["tests"] == {"inputs": ["1 2\n"], "outputs": ["3\n"]} and "answer" not in code_row
    assert code_row["ability"] == "code"
    assert aime_row["answer"] == "204"
    assert [str(r) for r in data.refs] == [f"{f}[0]", f"{f}[1]", f"{f}[2]"]
    # the or1 layout reads top-level answer/tests: these rows have none, all three are bad
    with pytest.raises(DataError, match=r"3 bad row\(s\) of 3 and no usable row is left"):
        load_rows(data_config(), [f], "data.train_files")


def test_saved_hf_dataset_and_jsonl_mix_and_globs(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"question": {"text": "q0"}, "sol": "1"}, {"question": {"text": "q1"}, "sol": "2"}]) \
        .save_to_disk(str(tmp_path / "hf"))
    write_jsonl(tmp_path / "a.jsonl", [{"question": {"text": "q2"}, "sol": 3}])
    cfg = data_config(**{"fields.prompt": "question.text", "fields.answer": "sol", "fields.tests": ""})
    data = load_rows(cfg, [str(tmp_path / "hf"), str(tmp_path / "*.jsonl")], "data.train_files")
    assert [r["prompt"] for r in data.rows] == ["q0", "q1", "q2"]
    assert [r["answer"] for r in data.rows] == ["1", "2", "3"]
    assert [str(r) for r in data.refs][-1] == f"{tmp_path / 'a.jsonl'}:1"
    with pytest.raises(DataError, match=r"'nope/\*.parquet' matches no file"):
        load_rows(cfg, ["nope/*.parquet"], "data.train_files")


def test_a_dataset_dict_directory_names_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"math": Dataset.from_list([{"prompt": "a", "answer": "1"}])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"DatasetDict with splits \['math'\]: name one split's directory"):
        load_rows(data_config(), [str(tmp_path / "dd")], "data.train_files")
    assert load_rows(data_config(), [str(tmp_path / "dd" / "math")], "x").rows[0]["answer"] == "1"


def test_dotted_paths():
    row = {"a": {"b": [{"c": 5}]}, "x.y": 1}
    assert lookup(row, "a.b.0.c") == 5 and lookup(row, "x.y") == 1
    assert lookup(row, "a.b.1.c") is _MISSING and lookup(row, "a.z") is _MISSING


def test_answers_decode_only_json_lists_of_strings():
    assert normalize_answer('["34", "\\\\frac{1}{2}"]') == ["34", "\\frac{1}{2}"]
    assert normalize_answer("[0, 1]") == "[0, 1]"  # an interval answer, not a list of answers
    assert normalize_answer(12) == "12" and normalize_answer(["3", 4]) == ["3", "4"]


def test_a_list_of_acceptable_answers_is_correct_if_any_matches():
    sample = {"answer": ["7", "\\frac{1}{2}"]}
    assert math_reward.score("so \\boxed{0.5}", sample) == 1.0
    assert math_reward.score("\\boxed{7}", sample) == 1.0
    assert math_reward.score("\\boxed{8}", sample) == 0.0


BAD_JSONL = [
    {"prompt": "fine", "answer": "1"},
    '{"prompt": "broken", "answer"',             # line 2: invalid JSON
    {"question": "no prompt field", "answer": "1"},  # line 3
    {"prompt": "   ", "answer": "1"},            # line 4: empty prompt
    {"prompt": "no answer"},                     # line 5
    {"prompt": "bad tests", "tests": "{not json"},  # line 6
    {"prompt": "fine too", "answer": "2"},
    {"prompt": "no answer either"},              # line 8
]


def test_bad_rows_are_skipped_and_every_one_is_named(tmp_path, caplog):
    f = write_jsonl(tmp_path / "train.jsonl", BAD_JSONL)
    with caplog.at_level(logging.WARNING, logger="or1"):
        data = load_rows(data_config(), [f], "data.train_files")
    assert [r["prompt"] for r in data.rows] == ["fine", "fine too"]
    assert data.report.rows_read == 8 and sum(data.report.bad_rows.values()) == 6
    text = caplog.text
    assert "skipped 6 bad row(s) of 8 (data.bad_rows=skip)" in text
    assert f"{f} line 2: invalid JSON" in text
    assert f"{f} line 3: no prompt" in text
    assert f"{f} line 4: empty prompt" in text
    assert f"{f} lines 5, 8: no answer or tests" in text
    assert f"{f} line 6: unparsable tests (invalid JSON)" in text


def test_bad_rows_stop_the_run_with_bad_rows_error(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", BAD_JSONL)
    with pytest.raises(DataError, match=r"(?s)6 bad row\(s\) of 8 \(data.bad_rows=error.*line 2: invalid JSON"):
        load_rows(data_config(bad_rows="error"), [f], "data.train_files")


def test_parquet_bad_rows_are_named_by_index(tmp_path):
    rows = [verl_row("ok", '["1"]'), verl_row("no truth", None), verl_row("tests", '{"inputs": [1]}')]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(DataError) as err:
        load_rows(data_config(layout="verl", bad_rows="error"), [str(tmp_path / "d.parquet")], "data.val_files")
    assert "d.parquet row 1: no answer or tests" in str(err.value)
    assert "d.parquet row 2: unparsable tests (need equally long" in str(err.value)
    assert "data.val_files" in str(err.value)


def test_duplicates_are_removed_across_files_and_counted(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "answer": "1"}, {"prompt": "q", "answer": "2"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "answer": "9"}])
    data = load_rows(data_config(), [a, b], "data.train_files")
    assert [(r["prompt"], r["answer"]) for r in data.rows] == [("p", "1"), ("q", "2")]
    assert data.report.duplicates == 1
    assert len(load_rows(data_config(dedup=False), [a, b], "x").rows) == 3


def test_messages_get_the_suffix_and_the_chat_template_and_long_prompts_are_counted(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "1+2"}], "answer": "3"},
        {"prompt": "4+5", "answer": "9"},
        {"prompt": "x" * 40, "answer": "1"}])
    data = load_rows(data_config(instruction_suffix=" Box it."), [f], "data.train_files")
    assert data.rows[0]["prompt"][-1]["content"] == "1+2 Box it." and data.rows[1]["prompt"] == "4+5 Box it."
    assert prompt_text(data.rows[0]["prompt"]) == "1+2 Box it."
    tok = build_tokenizer()
    dataset = PromptDataset.from_rows(data, tok, max_prompt_length=24)
    assert len(dataset) == 2 and dataset.report.too_long == 1 and dataset.report.prompts == 2
    # the tiny template concatenates the messages' contents, then "="
    assert tok.decode(dataset.prompt_ids[0]) == "S1+2 Box it.="
    assert tok.decode(render_prompt(tok, "4+5", False)) == "4+5"
    with pytest.raises(DataError, match="apply_chat_template=false"):
        render_prompt(tok, data.rows[0]["prompt"], False)


def test_kept_subsets_keep_each_format(tmp_path):
    from datasets import Dataset, load_from_disk

    src = write_verl_parquet(tmp_path / "in.parquet")
    out = write_subset(src, [2, 0], tmp_path / "kept" / "in.parquet")
    table = pq.read_table(out)
    assert table.schema == pq.read_table(src).schema
    assert [r["extra_info"]["index"] for r in table.to_pylist()] == [0, 2]
    j = write_jsonl(tmp_path / "in.jsonl", ['{"prompt": "a",   "answer": "1"}', "", '{"prompt": "b", "answer": "2"}'])
    assert write_subset(j, [3], tmp_path / "kept" / "in.jsonl").read_text() == '{"prompt": "b", "answer": "2"}\n'
    Dataset.from_list([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]).save_to_disk(
        str(tmp_path / "hf"))
    assert load_from_disk(str(write_subset(str(tmp_path / "hf"), [1], tmp_path / "kept" / "hf")))["prompt"] == ["b"]


def test_rows_need_neither_answer_nor_tests_when_the_layout_has_none(tmp_path):
    """A reward model as the only reward: prompts alone are rows."""
    f = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "write a poem"}, {"prompt": "  "}])
    data = load_rows(data_config(**{"fields.answer": "", "fields.tests": ""}), [f], "data.train_files")
    assert [r["prompt"] for r in data.rows] == ["write a poem"] and data.report.bad_rows == {"empty prompt": 1}
    with pytest.raises(DataError, match="no answer or tests"):
        load_rows(data_config(bad_rows="error"), [f], "data.train_files")
