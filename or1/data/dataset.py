"""Prompt datasets and the epoch-based prompt sampler."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file and row."""


@dataclass
class DataRows:
    """Rows read from data files, with where each came from (``file:line``) for error messages."""

    rows: list[dict]
    where: list[str]


def read_rows(files: list[str], prompt_key: str, field_name: str = "data.train_files") -> DataRows:
    """Read and check jsonl rows: every file exists and parses, every row is an object with a
    non-empty string under ``prompt_key``. Cheap (no tokenizer): run before anything expensive.
    Raises ``DataError`` naming ``field_name``, the file and the line."""
    if not files:
        raise DataError(f"{field_name} is empty: give at least one jsonl file")
    rows, where = [], []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise DataError(f"{field_name}: data file {f!r} does not exist"
                            + (f" (relative to {Path.cwd()})" if not path.is_absolute() else ""))
        with open(path) as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{f}:{line_no} is not valid JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{f}:{line_no} is a JSON {type(row).__name__}, not an object with a "
                                    f"{prompt_key!r} field")
                prompt = row.get(prompt_key)
                if not isinstance(prompt, str) or not prompt.strip():
                    problem = "has no" if prompt_key not in row else "has an empty or non-string"
                    raise DataError(f"{f}:{line_no} {problem} prompt field {prompt_key!r} (data.prompt_key); "
                                    f"its fields: {sorted(row)[:12]}")
                rows.append(row)
                where.append(f"{f}:{line_no}")
    if not rows:
        raise DataError(f"{field_name}: no rows in {files}")
    return DataRows(rows, where)


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
    where: list[str] = field(default_factory=list)  # file:line of each row

    @classmethod
    def from_rows(cls, data: DataRows, tokenizer, prompt_key: str, max_prompt_length: int,
                  apply_chat_template: bool = True) -> "PromptDataset":
        rows, ids, where, dropped = [], [], [], 0
        for row, at in zip(data.rows, data.where):
            p = render_prompt(tokenizer, row[prompt_key], apply_chat_template)
            if len(p) > max_prompt_length:
                dropped += 1
                continue
            rows.append(row)
            ids.append(p)
            where.append(at)
        if dropped:
            log.warning("dropped %d of %d prompts longer than %d tokens (data.max_prompt_length)", dropped,
                        dropped + len(rows), max_prompt_length)
        if not rows:
            raise DataError(f"every prompt is longer than data.max_prompt_length={max_prompt_length} tokens")
        return cls(rows, ids, dropped, where)

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
