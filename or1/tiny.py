"""The tiny model factory: a small Qwen2 causal LM with a character-level tokenizer.

``python -m or1.tiny --out DIR`` writes a Hugging Face model directory that both ``transformers``
and vLLM load. No weights can be downloaded on CI, so every test and the ``tiny_cpu`` recipe use
models made here. ``--warmup-steps N`` adds a short supervised warm-up on the synthetic arithmetic
task so that RL starts from a real but weak policy, as OR1 starts from an SFT model.

Design constraints (see docs/notes.md): vLLM's CPU attention needs head_dim >= 32, so head_dim is
fixed at 64 and the number of heads follows from the hidden size. The tokenizer is byte-level
(259 tokens: 256 bytes + pad, eos, unk), so one ASCII character is one token.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from or1.progress import duration

log = logging.getLogger("or1")

HEAD_DIM = 64
PAD, EOS, UNK = "<pad>", "<|endoftext|>", "<unk>"
SPECIAL_TOKENS = [PAD, EOS, UNK]
# The prompt is the user's text followed by "=", the answer follows directly. Kept trivial so a
# character model can learn it; real models bring their own chat template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}={% endif %}"
)


@dataclass
class TinySpec:
    hidden_size: int = 128
    num_layers: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    seed: int = 0


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes, in byte order (byte-level BPE's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_tokenizer():
    """A fast tokenizer with one token per byte (so per ASCII character) plus three specials.

    It is byte-level BPE with no merges: transformers 5 loads a Qwen2 checkpoint's tokenizer as
    ``Qwen2Tokenizer``, which rebuilds a byte-level BPE pipeline from the saved vocab and merges;
    any other pre-tokenizer would be silently replaced (spaces were dropped). With this design the
    saved ``tokenizer.json`` and that rebuilt pipeline tokenize identically.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in byte_alphabet():
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        model_max_length=1 << 20, clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(spec: TinySpec, tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if spec.hidden_size % HEAD_DIM:
        raise ValueError(f"hidden_size must be a multiple of {HEAD_DIM} (vLLM CPU attention)")
    heads = spec.hidden_size // HEAD_DIM
    if heads % spec.num_kv_heads:
        raise ValueError(f"{heads} attention heads are not divisible by {spec.num_kv_heads} KV heads")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        rope_theta=10000.0,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    return Qwen2ForCausalLM(config)


NEAR_MISS_OFFSETS = (-10, -2, -1, 1, 2, 10)


def noisy_answer(answer: str, rng: random.Random, label_noise: float) -> str:
    """The answer, or with probability ``label_noise`` a near miss (off by 1, 2 or 10)."""
    if label_noise > 0 and rng.random() < label_noise:
        return str(int(answer) + rng.choice(NEAR_MISS_OFFSETS))
    return answer


def supervised_warmup(model, tokenizer, rows: list[dict], steps: int, batch_size: int = 64,
                      lr: float = 3e-3, seed: int = 0, log_every: int = 0, label_noise: float = 0.0) -> None:
    """Teacher-forced training on ``prompt -> answer<eos>``; the loss covers only answer tokens.

    ``label_noise`` replaces that fraction of targets (drawn afresh each time) with near misses,
    so the warmed-up policy samples a spread of answers around the right one, as SFT models do;
    RL then has to sharpen it, which is what the tiny recipe demonstrates.
    """
    import torch

    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    encoded = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=False)
        encoded.append((tokenizer(prompt, add_special_tokens=False)["input_ids"], row["answer"]))

    def target(answer: str) -> list[int]:
        return tokenizer(noisy_answer(answer, rng, label_noise), add_special_tokens=False)["input_ids"] + [eos]

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    t0 = time.time()
    for step in range(steps):
        batch = [(p, target(a)) for p, a in (encoded[rng.randrange(len(encoded))] for _ in range(batch_size))]
        length = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((batch_size, length), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, length), -100, dtype=torch.long)
        attn = torch.zeros((batch_size, length), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            seq = p + a
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p): len(seq)] = torch.tensor(a)
            attn[i, : len(seq)] = 1
        # cosine decay keeps the short warm-up stable
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            elapsed = time.time() - t0
            left = elapsed / (step + 1) * (steps - step - 1)
            log.info("tiny model warm-up: step %d/%d, loss %.4f, %s so far, ~%s left", step + 1, steps, loss.item(),
                     duration(elapsed), duration(left))
    model.eval()


def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 8) -> float:
    """Exact-match accuracy of greedy decoding with transformers (a reference independent of vLLM)."""
    import torch

    correct = 0
    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                             add_generation_prompt=True, tokenize=False) for r in rows]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    for text, row in zip(texts, rows):
        correct += text.strip() == row["answer"]
    tokenizer.padding_side = "right"
    return correct / max(len(rows), 1)


def create_tiny_model(out: str | Path, spec: TinySpec | None = None, warmup_steps: int = 0,
                      warmup_rows: list[dict] | None = None, warmup_lr: float = 3e-3,
                      log_every: int = 0, label_noise: float = 0.0) -> Path:
    """Write a tiny model directory (weights, config, tokenizer) and return its path."""
    spec = spec or TinySpec()
    out = Path(out)
    tokenizer = build_tokenizer()
    model = build_model(spec, tokenizer)
    info = {"spec": asdict(spec), "warmup_steps": warmup_steps, "label_noise": label_noise}
    if warmup_steps:
        if not warmup_rows:
            raise ValueError("warmup_steps > 0 needs warmup_rows")
        t0 = time.time()
        supervised_warmup(model, tokenizer, warmup_rows, warmup_steps, lr=warmup_lr,
                          seed=spec.seed, log_every=log_every, label_noise=label_noise)
        info["warmup_seconds"] = round(time.time() - t0, 1)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "or1_tiny.json").write_text(json.dumps(info, indent=1))
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    tmp.rename(out)  # the directory appears only when complete
    return out


def create_tiny_reward_model(out: str | Path, spec: TinySpec | None = None) -> Path:
    """A random tiny reward model: Qwen2 for sequence classification with one output."""
    import torch
    from transformers import Qwen2ForSequenceClassification

    spec = spec or TinySpec()
    tokenizer = build_tokenizer()
    config = build_model(spec, tokenizer).config
    config.num_labels = 1
    torch.manual_seed(spec.seed)
    model = Qwen2ForSequenceClassification(config)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    from or1.data.arithmetic import generate_splits

    p = argparse.ArgumentParser(description="Write a tiny Qwen2 model with a byte-level tokenizer.")
    p.add_argument("--out", required=True, help="directory to create")
    p.add_argument("--hidden-size", type=int, default=TinySpec.hidden_size, help="a multiple of 64")
    p.add_argument("--layers", type=int, default=TinySpec.num_layers)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="supervised steps on the synthetic arithmetic task (0: random weights)")
    p.add_argument("--warmup-lr", type=float, default=1e-3)
    p.add_argument("--label-noise", type=float, default=0.0,
                   help="fraction of warm-up targets replaced by near misses (the tiny_cpu recipe uses 0.3)")
    p.add_argument("--max-operand", type=int, default=49, help="arithmetic operands are 0..max")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = TinySpec(hidden_size=a.hidden_size, num_layers=a.layers, seed=a.seed)
    space = (a.max_operand + 1) ** 2
    train, val = generate_splits(min(2000, space - 200), 200, max_operand=a.max_operand, seed=0)
    path = create_tiny_model(a.out, spec, a.warmup_steps, train, a.warmup_lr, log_every=100,
                             label_noise=a.label_noise)
    if a.warmup_steps:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        acc = greedy_accuracy(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), val)
        print(f"greedy accuracy on 200 held-out problems after warm-up: {acc:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
