"""Reward-model rewards: a Hugging Face sequence-classification model served by a Ray actor.

Reward models such as the Skywork-Reward-V2 family are distributed as
``AutoModelForSequenceClassification`` checkpoints with one output: the score of a conversation.
The actor renders (prompt, response) with the reward model's own chat template, scores in
batches, and returns one float per pair. A reward term ``fn: rm:<name>`` uses the model
configured under ``reward.reward_models.<name>``.
"""

from __future__ import annotations

import torch


class RewardModelWorker:
    """Wrapped with ``ray.remote`` by the reward manager; a plain class so tests can run it in-process."""

    def __init__(self, path: str, dtype: str = "float32", batch_size: int = 16, max_length: int = 4096):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from or1.workers.backends import torch_dtype

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype(dtype))
        self.model.to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.model.config.num_labels != 1:
            raise ValueError(f"{path}: a reward model has one output (num_labels=1), "
                             f"this one has {self.model.config.num_labels}")
        self.batch_size, self.max_length = batch_size, max_length

    def render(self, prompt: str, response: str) -> str:
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(chat, tokenize=False)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        texts = [self.render(p, r) for p, r in zip(prompts, responses)]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length, add_special_tokens=False)
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out
