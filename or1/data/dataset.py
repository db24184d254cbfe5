"""Prompt datasets and the epoch-based prompt sampler."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def load_jsonl(files: list[str]) -> list[dict]:
    rows = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FileNotFoundError(f"data file {f!r} does not exist")
        with open(path) as fh:
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{f}:{line_no} is not valid JSON: {exc}") from exc
    return rows


def render_prompt(tokenizer, text: str, apply_chat_template: bool) -> list[int]:
    """Token ids of the prompt the policy sees (the chat template's generation prompt included)."""
    if apply_chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class PromptDataset:
    """Rows plus their prompt token ids; rows whose prompt exceeds the limit are dropped (counted)."""

    rows: list[dict]
    prompt_ids: list[list[int]]
    dropped_too_long: int = 0

    @classmethod
    def from_files(cls, files: list[str], tokenizer, prompt_key: str, max_prompt_length: int,
                   apply_chat_template: bool = True) -> "PromptDataset":
        rows, ids, dropped = [], [], 0
        for row in load_jsonl(files):
            if prompt_key not in row:
                raise KeyError(f"a data row lacks the prompt field {prompt_key!r}: {str(row)[:200]}")
            p = render_prompt(tokenizer, row[prompt_key], apply_chat_template)
            if len(p) > max_prompt_length:
                dropped += 1
                continue
            rows.append(row)
            ids.append(p)
        if dropped:
            log.warning("dropped %d of %d prompts longer than %d tokens", dropped, dropped + len(rows),
                        max_prompt_length)
        if not rows:
            raise ValueError(f"no usable prompts in {files}")
        return cls(rows, ids, dropped)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class EpochSampler:
    """Walks a fresh seeded permutation of the dataset every epoch; batches span epoch ends.

    Its whole state is ``(epoch, position)``: the order of epoch e is a pure function of
    ``(seed, e)``, so a resumed run replays exactly the same prompts.
    """

    size: int
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    _order: np.ndarray | None = field(default=None, repr=False)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            else:
                self._order = np.arange(self.size)
        return self._order

    def next_batch(self, batch_size: int) -> list[int]:
        out: list[int] = []
        while len(out) < batch_size:
            order = self._epoch_order()
            take = min(batch_size - len(out), self.size - self.position)
            out.extend(int(i) for i in order[self.position: self.position + take])
            self.position += take
            if self.position == self.size:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
