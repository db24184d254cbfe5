import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from or1.data.dataset import render_prompt


def test_tiny_model_loads_with_transformers(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg.hidden_size // cfg.num_attention_heads == 64
    assert len(tok) == cfg.vocab_size == 259  # 256 bytes + pad, eos, unk
    ids = render_prompt(tok, "12+35", apply_chat_template=True)
    assert tok.decode(ids) == "12+35="  # one token per character, template appends "="
    assert len(ids) == 6
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, 6, 259) and torch.isfinite(logits).all()
    info = json.loads((tiny_model / "or1_tiny.json").read_text())
    assert info["spec"]["hidden_size"] == 128


def test_tokenizer_round_trips_text_and_eos(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "\\boxed{3/4} x = -7.5\n"  # spaces and newlines survive (transformers 5 once dropped them)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text


@pytest.mark.slow  # a 30-second supervised run
def test_warmup_teaches_the_task(tmp_path):
    from or1.data.arithmetic import generate_splits
    from or1.tiny import TinySpec, create_tiny_model, greedy_accuracy

    train, val = generate_splits(340, 60, max_operand=19, seed=1)  # held-out sums of 0..19
    path = create_tiny_model(tmp_path / "m", TinySpec(hidden_size=256), warmup_steps=400,
                             warmup_rows=train, warmup_lr=1e-3)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    acc = greedy_accuracy(model, tok, val)
    assert acc >= 0.5, acc  # random weights score ~0
