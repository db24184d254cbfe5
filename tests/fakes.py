"""Small fakes of the driver's components, so ``or1.trainer.Trainer``'s real logic runs in milliseconds.

- ``ScriptedRollouts`` answers each prompt with responses scripted per prompt index: a response is
  the character "1" (right) or "0" (wrong) followed by filler tokens, and may be marked truncated.
- ``ExactRewards`` scores "1..." as 1.0 and anything else as 0.0, like a verifier would.
- ``RecordingLearners`` keeps every batch it is given and answers like a learner whose policy is
  exactly vLLM's (old log-probs = vLLM's log-probs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from omegaconf import OmegaConf

from or1.config import OR1Config
from or1.data.dataset import PromptDataset
from or1.rewards.manager import RewardScores
from or1.trainer import Components, Trainer
from or1.workers.rollout import Sample

PROMPT_BASE = 1000  # prompt i is the single token PROMPT_BASE + i
RIGHT, WRONG, FILLER = ord("1"), ord("0"), ord("x")


def config(tmp_path, **overrides) -> OR1Config:
    """The schema's defaults, small sizes, and ``overrides`` as dotted keys (``{"trainer.total_steps": 3}``)."""
    cfg = OmegaConf.structured(OR1Config)
    base = {"model.path": "unused", "trainer.output_dir": str(tmp_path / "run"), "trainer.loggers": ["jsonl"],
            "trainer.prompts_per_step": 2, "trainer.total_steps": 1, "trainer.val_before_train": False,
            "trainer.save_final": False, "rollout.n": 4, "rollout.max_response_length": 8,
            "rollout.max_model_len": 64, "data.max_prompt_length": 8}
    for key, value in {**base, **overrides}.items():
        OmegaConf.update(cfg, key, value, merge=isinstance(value, (list, dict)))
    return OmegaConf.to_object(cfg)


def dataset(num_prompts: int, data_source: str = "math", prefix: str = "p") -> PromptDataset:
    rows = [{"prompt": f"{prefix}{i}", "answer": "1", "data_source": data_source} for i in range(num_prompts)]
    return PromptDataset(rows, [[PROMPT_BASE + i] for i in range(num_prompts)])


@dataclass
class Outcome:
    """One response: right or wrong, its length in tokens, and whether the length limit cut it."""

    right: bool
    length: int = 2
    truncated: bool = False


class ScriptedRollouts:
    """``script(prompt_index, n) -> [Outcome] * n``; records every generate call."""

    def __init__(self, script: Callable[[int, int], list[Outcome]]):
        self.script = script
        self.calls: list[dict] = []
        self.asleep = False
        self.events: list[str] = []
        self.finish_first_added = False  # sessions: prompts finish in the order they were added (else the last first)

    def generate(self, prompt_token_ids, n, temperature, top_p, max_tokens, seeds):
        self.calls.append({"prompts": [p[0] - PROMPT_BASE for p in prompt_token_ids], "n": n,
                           "temperature": temperature, "max_tokens": max_tokens, "seeds": seeds})
        return [s for g, ids in enumerate(prompt_token_ids) for s in self.answer(g, ids, n, max_tokens)]

    def answer(self, prompt_index, prompt_ids, n, max_tokens) -> list[Sample]:
        """The script's n responses to one prompt."""
        outcomes = self.script(prompt_ids[0] - PROMPT_BASE, n)
        assert len(outcomes) == n
        samples = []
        for o in outcomes:
            tokens = ([RIGHT if o.right else WRONG] + [FILLER] * (o.length - 1))[:max_tokens]
            samples.append(Sample(prompt_index, tokens, [-0.5] * len(tokens), o.truncated or o.length > max_tokens))
        return samples

    def generate_stream(self, prompt_token_ids, n, temperature, top_p, max_tokens, seeds):
        """``generate``'s samples as the engines hand them out: two prompts at a time, the last ones first."""
        samples = self.generate(prompt_token_ids, n, temperature, top_p, max_tokens, seeds)
        prompts = list(range(len(prompt_token_ids)))[::-1]
        for start in range(0, len(prompts), 2):
            chosen = set(prompts[start:start + 2])
            yield [smp for smp in samples if smp.prompt_index in chosen]

    def session(self, sampling):
        return FakeSession(self, sampling)

    def sleep(self, level):
        self.asleep = True
        self.events.append(f"sleep{level}")

    def wake_up(self, tags=None):
        self.events.append(f"wake:{','.join(tags or ['all'])}")
        if tags is None or "kv_cache" in tags:
            self.asleep = False


class FakeSession:
    """``RolloutSession`` over the script: prompts finish two at a time, the most recently added first
    (so never in the order they were drawn). Each ``add`` is recorded like a ``generate`` call."""

    def __init__(self, rollouts: ScriptedRollouts, sampling):
        self.rollouts, self.sampling = rollouts, sampling
        self.queue: list = []  # (key, prompt ids, seed)
        self.aborted = 0

    @property
    def pending(self) -> int:
        return len(self.queue)

    def add(self, prompts):
        s = self.sampling
        self.rollouts.calls.append({"prompts": [ids[0] - PROMPT_BASE for _, ids, _ in prompts], "n": s.n,
                                    "temperature": s.temperature, "max_tokens": s.max_tokens,
                                    "seeds": [seed for _, _, seed in prompts], "still_generating": len(self.queue)})
        self.queue += prompts

    def next_finished(self):
        if self.rollouts.finish_first_added:
            done, self.queue = self.queue[:2], self.queue[2:]
        else:
            done, self.queue = self.queue[-2:][::-1], self.queue[:-2]
        return [(key, self.rollouts.answer(-1, ids, self.sampling.n, self.sampling.max_tokens)) for key, ids, _ in done]

    def abort(self):
        self.aborted += len(self.queue)
        self.queue = []


class InlineExecutor:
    """An executor that runs each task as it is submitted: scores are ready the moment they are asked
    for (``Trainer.make_scorer``), so a test sees the driver's decisions at fixed points."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


class ExactRewards:
    """A verifier: 1.0 for a response starting with "1", else 0.0. ``fail`` makes every item an error."""

    def __init__(self):
        self.fail = False
        self.calls = 0

    def score(self, responses, rows):
        self.calls += 1
        if self.fail:
            n = len(responses)
            return RewardScores(torch.zeros(n), torch.zeros(n), {"score": [0.0] * n}, errors=n, items=n,
                                first_failure="reward score (x:score): error: KeyError: 'answer'")
        values = [1.0 if r.startswith("1") else 0.0 for r in responses]
        return RewardScores(torch.tensor(values), torch.tensor(values), {"score": values}, items=len(values))

    def score_groups(self, responses, rows, sizes):
        out, start = [], 0
        for size in sizes:
            out.append(self.score(responses[start:start + size], rows[start:start + size]))
            start += size
        return out


@dataclass
class RecordingLearners:
    """Records every update batch; old log-probs equal vLLM's, so ``rollout/logprob_abs_diff`` is 0."""

    updates: list[dict] = field(default_factory=list)
    log_prob_calls: list[bool] = field(default_factory=list)  # reference=...
    pushes: int = 0
    saved: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    world_size: int = 1

    def compute_log_probs(self, batch, reference=False):
        self.log_prob_calls.append(reference)
        return batch.rollout_log_probs.clone() - (0.1 if reference else 0.0)

    def update(self, batch, entropy_coef):
        self.updates.append({"sequences": batch.sequences(), "token_ids": batch.token_ids.tolist(),
                             "num_sequences": batch.num_sequences, "advantages": batch.advantages.clone(),
                             "old_log_probs": batch.old_log_probs.clone(),
                             **({} if batch.ref_log_probs is None else {"ref_log_probs": batch.ref_log_probs.clone()}),
                             "entropy_coef": entropy_coef})
        return {"actor/pg_loss": float(batch.per_response_token(batch.advantages).sum()), "actor/grad_norm": 1.0,
                "actor/num_tokens": float(batch.num_response_tokens), "actor/skipped_update": 0.0}

    def push_weights(self, rollouts, dtype, bucket_mb):
        self.pushes += 1
        if hasattr(rollouts, "events"):
            rollouts.events.append("push")
        return {"sync/bytes": 1.0, "sync/buckets": 1.0}

    def save_checkpoint(self, path):
        self.saved.append(path)
        with open(os.path.join(path, "learner.json"), "w") as f:
            json.dump({"updates": len(self.updates)}, f)

    def load_checkpoint(self, path):
        self.loaded.append(path)

    def save_hf(self, out_dir, tokenizer_path):
        os.makedirs(out_dir, exist_ok=True)
        return out_dir


class CharTokenizer:
    pad_token_id = 0

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(t) for t in seq) for seq in ids]


def make_trainer(cfg: OR1Config, script, num_prompts: int = 8, val_prompts: int = 0, resume_from=None,
                 sleep_rollouts: bool = False, rewards: ExactRewards | None = None):
    parts = Components(RecordingLearners(), ScriptedRollouts(script), rewards or ExactRewards(), CharTokenizer(),
                       dataset(num_prompts), dataset(val_prompts) if val_prompts else None,
                       sleep_rollouts=sleep_rollouts)
    return Trainer(cfg, parts, resume_from=resume_from)


def by_prompt(table: dict[int, list[Outcome]], default: Callable[[int, int], list[Outcome]] | None = None):
    """A script from a table of prompt index -> outcomes (``default`` for the rest: all wrong)."""
    def script(index: int, n: int) -> list[Outcome]:
        if index in table:
            return table[index]
        return default(index, n) if default else [Outcome(False)] * n
    return script


def mixed(index: int, n: int) -> list[Outcome]:
    """Half right, half wrong: every group informative."""
    return [Outcome(i % 2 == 0, length=2 + i) for i in range(n)]


def rows_of(update: dict) -> list[tuple[int, tuple[int, ...]]]:
    """(prompt index, response tokens) of every row of one recorded update batch."""
    return [(prompt[0] - PROMPT_BASE, tuple(response)) for prompt, response in update["sequences"]]
