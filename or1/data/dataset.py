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

    Prompts marked mastered (``mark_mastered``) leave the pool from the *next* epoch on (OR1 drops
    prompts the policy solves every time). The order of epoch e is a pure function of
    ``(seed, e, pool)``, and the state holds the pool's exclusions, so a resumed run replays
    exactly the same prompts.
    """

    size: int
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    mastered: set[int] = field(default_factory=set)
    _epoch_excluded: frozenset[int] | None = field(default=None, repr=False)
    _order: np.ndarray | None = field(default=None, repr=False)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            if self._epoch_excluded is None:
                self._epoch_excluded = frozenset(self.mastered)
            pool = np.array([i for i in range(self.size) if i not in self._epoch_excluded], dtype=np.int64)
            if len(pool) == 0:
                raise RuntimeError(f"all {self.size} prompts are mastered; nothing is left to train on")
            self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(pool)
                           if self.shuffle else pool)
        return self._order

    def next_batch(self, batch_size: int) -> list[int]:
        out: list[int] = []
        while len(out) < batch_size:
            order = self._epoch_order()
            take = min(batch_size - len(out), len(order) - self.position)
            out.extend(int(i) for i in order[self.position: self.position + take])
            self.position += take
            if self.position == len(order):
                self.epoch, self.position, self._order, self._epoch_excluded = self.epoch + 1, 0, None, None
        return out

    def mark_mastered(self, indices) -> int:
        """Exclude these prompts from later epochs; returns how many were new."""
        before = len(self.mastered)
        self.mastered.update(int(i) for i in indices)
        return len(self.mastered) - before

    def state_dict(self) -> dict:
        excluded = self._epoch_excluded if self._epoch_excluded is not None else frozenset(self.mastered)
        return {"size": self.size, "epoch": self.epoch, "position": self.position, "mastered": sorted(self.mastered),
                "epoch_excluded": sorted(excluded) if self.position else None}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
        self.mastered = set(state.get("mastered", []))
        excluded = state.get("epoch_excluded")
        self._epoch_excluded = frozenset(excluded) if excluded is not None else None
