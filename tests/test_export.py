"""``python -m or1.export`` on what users point it at: a checkpoint, a run directory, a run's
``final/``, and things that are none of these (each answered with what it is and what is expected).
Both learner backends' sharded checkpoints are exported bit for bit in tests/test_distributed_learner.py."""

import sys

import pytest
import torch

from or1.export import ExportError, export_checkpoint, main


def test_a_hugging_face_directory_is_re_saved_with_its_tokenizer(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_checkpoint(tiny_model, tmp_path / "bf16", dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert next(model.parameters()).dtype == torch.bfloat16 and (out / "tokenizer.json").is_file()
    for (name, a), (_, b) in zip(model.named_parameters(), original.named_parameters()):
        assert torch.equal(a, b.to(torch.bfloat16)), name


@pytest.mark.parametrize("layout, message", [
    ({}, "is neither a checkpoint"),
    ({"checkpoints/step_00000002.tmp/learner": None}, "has a checkpoints/ directory but no complete checkpoint"),
    ({"checkpoints/step_00000002/learner": None, "checkpoints/step_00000002/trainer_state.json": "{}"},
     "has no hf/config.json"),
])
def test_what_is_not_a_checkpoint_is_named(tmp_path, layout, message):
    run = tmp_path / "run"
    run.mkdir()
    for rel, content in layout.items():
        path = run / rel
        if content is None:
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    with pytest.raises(ExportError, match=message):
        export_checkpoint(run, tmp_path / "out")


def test_the_command_line_says_what_is_wrong_without_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["or1.export", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert f"or1.export: {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
