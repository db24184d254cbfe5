"""Tokenized prompt datasets and the epoch-based prompt sampler (rows come from ``or1.data.rows``)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace

import numpy as np

from or1.data.rows import DataReport, DataRows, prompt_key
from or1.data.sources import DataError, RowRef

__all__ = ["DataError", "EpochSampler", "PromptDataset", "render_prompt"]

log = logging.getLogger(__name__)


def render_prompt(tokenizer, prompt, apply_chat_template: bool) -> list[int]:
    """Token ids of the prompt the policy sees (the chat template's generation prompt included).

    ``prompt``: text (one user message) or chat messages. Without the chat template a text is
    tokenized as it is; messages need the template (``DataError`` otherwise)."""
    if apply_chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    elif isinstance(prompt, str):
        text = prompt
    else:
        raise DataError("a prompt is a list of chat messages but data.apply_chat_template=false; set it to true "
                        "(messages are rendered with the tokenizer's chat template)")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class PromptDataset:
    """Rows plus their prompt token ids; rows whose prompt exceeds the limit are dropped (counted)."""

    rows: list[dict]
    prompt_ids: list[list[int]]
    refs: list[RowRef] = field(default_factory=list)  # where each row came from (file, row number)
    report: DataReport | None = None

    @classmethod
    def from_rows(cls, data: DataRows, tokenizer, max_prompt_length: int, apply_chat_template: bool = True,
                  field_name: str = "data.train_files") -> "PromptDataset":
        rows, ids, refs = [], [], []
        for row, ref in zip(data.rows, data.refs):
            p = render_prompt(tokenizer, row["prompt"], apply_chat_template)
            if len(p) > max_prompt_length:
                continue
            rows.append(row)
            ids.append(p)
            refs.append(ref)
        report = replace(data.report, too_long=len(data.rows) - len(rows), prompts=len(rows))
        log.info("%s", report.summary(field_name))
        if report.too_long:
            log.warning("%s: dropped %d of %d prompts longer than %d tokens (data.max_prompt_length)", field_name,
                        report.too_long, len(data.rows), max_prompt_length)
        if not rows:
            raise DataError(f"{field_name}: every prompt is longer than data.max_prompt_length={max_prompt_length} "
                            "tokens")
        return cls(rows, ids, refs, report)

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> str:
        """Identifies the prompts and their order: a resumed run checks it is on the same data."""
        digest = hashlib.sha1()
        for row in self.rows:
            digest.update(prompt_key(row["prompt"]).encode())
            digest.update(b"\0")
        return digest.hexdigest()[:16]


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
