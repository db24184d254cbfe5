"""The driver loop: sample prompts -> generate -> score -> advantages -> filter -> update -> push weights.

The driver holds no model. It owns the data order, the algorithm's bookkeeping (filtering,
refill, the sample buffer, the mini-batch plan, the entropy bonus, stages) and checkpoint state;
the heavy work is done by the components it is given (``Components``): a learner group, a rollout
group, a reward manager. ``or1.startup.build`` starts the real ones (Ray actors, vLLM, FSDP2 or
DeepSpeed, the reward pool); ``tests/test_driver.py`` drives this same code with small fakes in
milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from or1.algo.advantages import apply_truncation_mask
from or1.algo.entropy import make_entropy_bonus
from or1.algo.filters import (InformativeFraction, PrefixRefill, groups_with_signal, mastered_groups, refill_prompts,
                              select_groups)
from or1.algo.minibatch import plan_mini_batches
from or1.algo.sample_buffer import SelectiveSampleBuffer
from or1.algo.stages import stage_at
from or1.batch import Group, SequenceBatch, batch_from_groups, group_rows
from or1.checkpoint import FAULT_ENV, STATE_FILE, CheckpointDirs
from or1.config import OR1Config, RefillMode
from or1.data.dataset import EpochSampler, PromptDataset
from or1.evaluation import ALL, score_problems, summarize
from or1.metrics import MetricsLogger, PhaseTimer
from or1.progress import NoProgress, Progress
from or1.rewards.manager import RewardScores
from or1.workers.rollout import Sampling, by_prompt

log = logging.getLogger("or1")

IN_FLIGHT_FILE = "in_flight.pt"  # off-policy: the batch generated before a checkpoint, trained after it
VAL_STREAM = 1 << 16  # training rounds use streams 0, 1, 2, ... (refill rounds), validation this one


def sampling_seeds(seed: int, step: int, count: int, stream: int = 0) -> list[int]:
    """Per-prompt vLLM seeds, a pure function of (run seed, step, stream): replays are reproducible."""
    rng = np.random.default_rng([seed, stream, step])
    return [int(x) for x in rng.integers(0, 2**31 - 1, size=count)]


# --- what the driver needs from its components (the real ones live in or1.workers and or1.rewards) ---
class Learners(Protocol):
    """``or1.workers.group.LearnerGroup``: data-parallel learner ranks driven as one."""

    def compute_log_probs(self, batch: SequenceBatch, reference: bool = False) -> torch.Tensor: ...
    def update(self, batch: SequenceBatch, entropy_coef: float) -> dict[str, float]: ...
    def push_weights(self, rollouts: Any, dtype: str, bucket_mb: float) -> dict[str, float]: ...
    def save_checkpoint(self, path: str) -> None: ...
    def load_checkpoint(self, path: str) -> None: ...
    def save_hf(self, out_dir: str, tokenizer_path: str | None) -> str: ...


class Rollouts(Protocol):
    """``or1.workers.group.RolloutGroup``: vLLM engines. ``generate``: samples grouped, prompt by prompt;
    ``generate_stream``: the same as prompts finish (a component without it is asked for whole
    batches); ``session``: prompts added and aborted while others generate (streaming refill)."""

    asleep: bool

    def generate(self, prompt_token_ids: list[list[int]], n: int, temperature: float, top_p: float,
                 max_tokens: int, seeds: list[int] | None) -> list: ...
    def generate_stream(self, prompt_token_ids: list[list[int]], n: int, temperature: float, top_p: float,
                        max_tokens: int, seeds: list[int] | None) -> Iterator[list]: ...
    def session(self, sampling: Sampling) -> Any: ...
    def sleep(self, level: int) -> None: ...
    def wake_up(self, tags: list[str] | None = None) -> None: ...


class Rewards(Protocol):
    """``or1.rewards.manager.RewardManager``."""

    def score(self, responses: list[str], rows: list[dict]) -> RewardScores: ...
    def score_groups(self, responses: list[str], rows: list[dict], sizes: Sequence[int]) -> list[RewardScores]: ...


@dataclass
class Components:
    """Everything the driver works with. ``or1.startup.build`` makes the real ones; tests pass fakes."""

    learners: Learners
    rollouts: Rollouts
    rewards: Rewards
    tokenizer: Any  # batch_decode(ids, skip_special_tokens=True)
    train_data: PromptDataset
    val_data: PromptDataset | None = None
    sleep_rollouts: bool = False  # colocated on GPUs: vLLM gives its memory back while the learners work
    on_close: list[Callable[[], None]] = field(default_factory=list)  # run by Trainer.shutdown, in order


@dataclass
class StepRollout:
    """One step's batch before training: its groups generated, scored and filter-selected
    (``Trainer.collect_groups``), and how it was made."""

    step: int  # the step (0-based) it is the batch of
    policy_version: int  # the policy that generated it: the one after this many updates
    kept: list[Group]
    generated: list[Group]
    scored: RewardScores
    filter_stats: dict[str, float]
    timer: PhaseTimer  # its phases (generate, reward; refill rounds added up) and reward latencies
    wall_s: float = 0.0  # from its start to its end
    data_epoch: int = 0  # the sampler's epoch once its prompts were drawn (the next batch may draw on meanwhile)


class RewardFailure(RuntimeError):
    """Every reward of several consecutive steps failed: training on fallback scores learns nothing."""


class Trainer:
    def __init__(self, cfg: OR1Config, parts: Components, resume_from: Path | None = None,
                 logger: MetricsLogger | None = None):
        self.cfg = cfg
        self.parts = parts
        self.learners, self.rollouts, self.rewards = parts.learners, parts.rollouts, parts.rewards
        self.tokenizer, self.train_data, self.val_data = parts.tokenizer, parts.train_data, parts.val_data
        self.output_dir = cfg.trainer.output_dir
        os.makedirs(self.output_dir, exist_ok=True)
        algo = cfg.algorithm
        self.sampler = EpochSampler(len(self.train_data), seed=cfg.trainer.seed, shuffle=cfg.data.shuffle)
        self.data_fingerprint = self.train_data.fingerprint()  # a resumed run checks it trains on the same prompts
        self.entropy = make_entropy_bonus(algo.entropy)
        self.informative = InformativeFraction()  # refill rounds oversample by 1 / this
        self.buffer = SelectiveSampleBuffer(algo.sample_buffer.capacity_groups) if algo.sample_buffer.enabled else None
        self.step = 0
        # the policy's version (updates applied) and the version the engines hold: a push is due when they
        # differ; a batch's staleness is the learners' version minus the one that generated it
        self.policy_version = self.engine_version = 0
        # trainer.off_policy_steps=1: the next step's batch, generated and scored on a background thread while
        # this step updates (a Future), or restored from a checkpoint (a StepRollout); None: none in flight
        self.pending: Future | StepRollout | None = None
        self._background: ThreadPoolExecutor | None = None
        # streaming refill: where finished prompts are scored while the engines go on (tests: inline)
        self.make_scorer: Callable[[], Any] = lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="or1-reward")
        self.run_id = uuid.uuid4().hex[:12]
        self.failed_reward_steps = 0  # consecutive steps in which every reward failed
        self.step_samples: list[dict] = []  # trainer.log_samples rows of the last step
        self.progress: Progress = NoProgress()  # live only inside fit()
        self.checkpoints = CheckpointDirs(self.output_dir)
        resumed = self.resume(resume_from)
        if resumed and not Path(resume_from).resolve().is_relative_to(Path(self.output_dir).resolve()):
            self.run_id = uuid.uuid4().hex[:12]  # trainer.init_from: a new run (and wandb run) from that policy
        if not resumed and self.rollouts.asleep:
            self.sync_weights()  # engines started asleep (colocated; level 2 dropped their weights)
        run_config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
        self.logger = logger or MetricsLogger(
            self.output_dir, list(cfg.trainer.loggers), run_config, cfg.trainer.wandb_mode, cfg.trainer.project,
            cfg.trainer.experiment_name, run_id=self.run_id, resume_step=self.step if resumed else None)

    # --- phases ----------------------------------------------------------------------------
    def stage_limit(self, step: int | None = None) -> tuple[int, int]:
        """(stage index, response limit in tokens) for ``step`` (0-based; default: the current one)."""
        stages = self.cfg.algorithm.stages
        if not stages:
            return 0, self.cfg.rollout.max_response_length
        i = stage_at(self.step if step is None else step, [st.steps for st in stages])
        return i, stages[i].max_response_length

    def generate_and_score(self, data: PromptDataset, indices: list[int], n: int, temperature: float,
                           seeds: list[int], max_tokens: int, timer: PhaseTimer) -> tuple[list, RewardScores]:
        return generate_and_score(self.rollouts, self.rewards, self.tokenizer, data, indices, n, temperature,
                                  self.cfg.rollout.top_p, max_tokens, seeds, timer)

    def make_groups(self, indices: list[int], samples: list, scored: RewardScores, n: int) -> list[Group]:
        """One ``Group`` per prompt: vLLM returns each prompt's ``n`` responses together, prompts in order."""
        return [self.make_group(index, members, scored.rewards[g * n:(g + 1) * n], scored.correct[g * n:(g + 1) * n])
                for g, (index, members) in enumerate(zip(indices, by_prompt(samples, n, len(indices))))]

    def make_group(self, index: int, members: list, rewards: torch.Tensor, correct: torch.Tensor) -> Group:
        return Group(index, self.train_data.prompt_ids[index], [s.token_ids for s in members], rewards, correct,
                     torch.tensor([s.truncated for s in members], dtype=torch.bool),
                     rollout_log_probs=[s.logprobs for s in members])

    def assign_advantages(self, groups: list[Group]) -> None:
        """Group-normalised advantages, the truncation mask included (one round's groups share a size)."""
        if not groups:
            return
        a = self.cfg.algorithm
        adv = apply_truncation_mask(torch.stack([g.rewards for g in groups]),
                                    torch.stack([g.truncated for g in groups]),
                                    a.truncation_mask, a.adv_eps, a.norm_adv_by_std, a.adv_baseline)
        for g, row in zip(groups, adv):
            g.advantages = row

    def collect_groups(self, step: int, max_tokens: int, timer: PhaseTimer
                       ) -> tuple[list[Group], list[Group], RewardScores, dict[str, float]]:
        """Generate, score and select step ``step``'s groups; returns (groups to train on, every group
        generated, the scores of every round, filter stats).

        Advantages (truncation mask included) are computed first; with
        ``filter.drop_zero_advantage`` a group is kept only if one of them is non-zero
        (``or1.algo.filters.select_groups``). With ``filter.refill`` more prompts are generated (at
        most ``max_refill_rounds`` extra rounds) until ``prompts_per_step`` groups are kept.
        """
        cfg, f = self.cfg, self.cfg.algorithm.filter
        if f.refill and f.refill_mode == RefillMode.streaming:
            return self.collect_streaming(step, max_tokens, timer)
        n, target = cfg.rollout.n, cfg.trainer.prompts_per_step
        rounds = 1 + (f.max_refill_rounds if f.refill else 0)
        kept: list[Group] = []
        generated: list[Group] = []
        scores: list[RewardScores] = []
        stats = {"filter/refill_rounds": 0.0, "filter/mastered_new": 0.0}
        refill_asked = refill_deficit = informative = 0
        for round_ in range(rounds):
            need = target - len(kept)
            if need <= 0:
                break
            ask = need
            if round_ > 0:
                stats["filter/refill_rounds"] += 1
                ask = refill_prompts(need, self.informative.value, f.max_oversample)
                refill_asked, refill_deficit = refill_asked + ask, refill_deficit + need
            indices = self.sampler.next_batch(ask)
            samples, scored = self.generate_and_score(
                self.train_data, indices, n, cfg.rollout.temperature,
                sampling_seeds(cfg.trainer.seed, step, len(indices), round_), max_tokens, timer)
            scores.append(scored)
            groups = self.make_groups(indices, samples, scored, n)
            self.assign_advantages(groups)
            generated += groups
            if f.drop_mastered:
                done = mastered_groups(torch.stack([g.correct for g in groups]), f.mastered_threshold)
                stats["filter/mastered_new"] += self.sampler.mark_mastered(
                    [g.prompt_index for g, m in zip(groups, done.tolist()) if m])
            advantages = torch.stack([g.advantages for g in groups])
            chosen = select_groups(advantages, need, f.drop_zero_advantage)
            kept += [groups[i] for i in chosen]
            round_informative = int(groups_with_signal(advantages).sum())
            informative += round_informative
            self.informative.observe(round_informative, len(groups))
        stats.update({
            "filter/groups_generated": float(len(generated)),
            "filter/groups_kept": float(len(kept)),
            "filter/groups_dropped": float(len(generated) - len(kept)),
            "filter/informative_frac": informative / len(generated),  # groups with a non-zero advantage
            "filter/mastered_total": float(len(self.sampler.mastered)),
            # refill rounds' prompts per missing group (1: no oversampling; 0: no refill round)
            "filter/oversample": refill_asked / refill_deficit if refill_deficit else 0.0,
            "filter/informative_estimate": self.informative.value,  # p, the running estimate after this step
        })
        return kept, generated, RewardScores.concat(scores), stats

    def collect_streaming(self, step: int, max_tokens: int, timer: PhaseTimer
                          ) -> tuple[list[Group], list[Group], RewardScores, dict[str, float]]:
        """``collect_groups`` with ``filter.refill_mode=streaming``: prompts are drawn into the running
        engines as ``or1.algo.filters.PrefixRefill`` decides, each finished prompt is scored on a
        scoring thread, and groups are judged in draw order. Draw k of the step uses seed stream k.
        The prompts drawn, the groups judged and kept, and every figure returned depend only on the
        groups' contents, never on which finished first."""
        cfg, f = self.cfg, self.cfg.algorithm.filter
        n, target = cfg.rollout.n, cfg.trainer.prompts_per_step
        planner = PrefixRefill(target, self.informative.value, f.max_oversample, target * (1 + f.max_refill_rounds))
        session = self.rollouts.session(Sampling(n, cfg.rollout.temperature, cfg.rollout.top_p, max_tokens))
        drawn: list[int] = []  # prompt indices in draw order; a prompt's position here is its key

        def draw(count: int) -> None:
            if count:
                indices = self.sampler.next_batch(count)
                seeds = sampling_seeds(cfg.trainer.seed, step, len(indices), planner.refills)
                session.add([(len(drawn) + i, self.train_data.prompt_ids[index], seed)
                             for i, (index, seed) in enumerate(zip(indices, seeds))])
                drawn.extend(indices)

        finished: dict[int, tuple[Group, RewardScores]] = {}  # scored, not judged yet
        judged: list[tuple[Group, RewardScores]] = []
        kept: list[Group] = []
        scoring: deque[tuple[float, Future]] = deque()
        scorer = self.make_scorer()
        try:
            with timer.phase("generate", f"{target} groups wanted"):
                draw(planner.start())
                while not planner.complete:
                    if session.pending:
                        samples = []
                        for position, members in session.next_finished():
                            for smp in members:
                                smp.prompt_index = position
                            samples += members
                        if samples:
                            scoring.append((time.perf_counter(), scorer.submit(
                                score_prompts, self.rewards, self.tokenizer, self.train_data, drawn, samples)))
                    # take scores that are ready, or wait for them when the engines have nothing left
                    while scoring and (scoring[0][1].done() or not session.pending):
                        arrived, future = scoring.popleft()
                        result, done = future.result()
                        timer.latencies["reward_latency"].append(done - arrived)
                        for position, (members, scores) in result.items():
                            group = self.make_group(drawn[position], members, scores.rewards, scores.correct)
                            self.assign_advantages([group])
                            finished[position] = (group, scores)
                    while planner.judged in finished and not planner.complete:
                        group, scores = finished.pop(planner.judged)
                        keep = bool(select_groups(group.advantages[None], 1, f.drop_zero_advantage))
                        judged.append((group, scores))
                        kept += [group] if keep else []
                        draw(planner.judge(keep))
                    if not (session.pending or scoring or planner.complete):
                        raise RuntimeError(f"streaming refill: nothing in flight after judging {planner.judged} of "
                                           f"{planner.drawn} groups")
        finally:
            session.abort()  # prompts of groups beyond the batch; the engines are idle after it
            scorer.shutdown(wait=True, cancel_futures=True)
        generated = [g for g, _ in judged]
        correct = torch.stack([g.correct for g in generated])
        informative = int(groups_with_signal(torch.stack([g.advantages for g in generated])).sum())
        self.informative.observe(informative, len(generated))
        mastered_new = 0
        if f.drop_mastered:
            done = mastered_groups(correct, f.mastered_threshold)
            mastered_new = self.sampler.mark_mastered([g.prompt_index for g, m in zip(generated, done.tolist()) if m])
        stats = {
            "filter/refill_rounds": float(planner.refills),  # draws after the first
            "filter/mastered_new": float(mastered_new),
            "filter/groups_generated": float(len(generated)),  # judged: what the batch was chosen from
            "filter/groups_kept": float(len(kept)),
            "filter/groups_dropped": float(len(generated) - len(kept)),
            "filter/groups_discarded": float(planner.drawn - planner.judged),  # drawn after the batch was full
            "filter/informative_frac": informative / len(generated),
            "filter/mastered_total": float(len(self.sampler.mastered)),
            "filter/oversample": planner.refill_prompts / planner.refill_deficit if planner.refill_deficit else 0.0,
            "filter/informative_estimate": self.informative.value,
        }
        return kept, generated, RewardScores.concat([s for _, s in judged]), stats

    def collect_rollout(self, step: int, timer: PhaseTimer) -> StepRollout:
        """Step ``step``'s batch, generated by the policy the engines hold now."""
        start, version = time.perf_counter(), self.engine_version
        kept, generated, scored, stats = self.collect_groups(step, self.stage_limit(step)[1], timer)
        return StepRollout(step, version, kept, generated, scored, stats, timer, time.perf_counter() - start,
                           self.sampler.epoch)

    def next_rollout(self, timer: PhaseTimer) -> StepRollout:
        """This step's batch: the one generated while the previous step updated, else generated now."""
        pending, self.pending = self.pending, None
        if pending is None:
            return self.collect_rollout(self.step, timer)
        with timer.phase("wait_rollout", f"step {self.step + 1}'s batch"):
            rollout = pending.result() if isinstance(pending, Future) else pending
        if rollout.step != self.step:
            raise RuntimeError(f"the batch in flight is step {rollout.step + 1}'s, the trainer is at step "
                               f"{self.step + 1}")
        timer.merge(rollout.timer)
        return rollout

    def start_next_rollout(self, timer: PhaseTimer) -> dict[str, float]:
        """``trainer.off_policy_steps=1``: push the current policy (the engines are idle), then generate
        and score the next step's batch on a background thread while this step updates. Returns the
        push's metrics."""
        if self.cfg.trainer.off_policy_steps == 0 or self.step + 1 >= self.cfg.trainer.total_steps:
            return {}
        with timer.phase("sync", "weights to vLLM"):
            sync_stats = self.engines_current()
        if self._background is None:
            self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="or1-rollout")
        # its own timer (merged into the step's when taken): the live progress line follows this thread
        self.pending = self._background.submit(self.collect_rollout, self.step + 1, PhaseTimer())
        return sync_stats

    def engines_current(self) -> dict[str, float]:
        """The engines idle and holding the current policy (before validation, before the next batch):
        waits for a batch in flight, pushes the weights if the engines are behind."""
        if isinstance(self.pending, Future):
            self.pending = self.pending.result()
        return self.sync_weights() if self.engine_version != self.policy_version else {}

    def sample_rows(self, groups: list[Group], scored: RewardScores) -> list[dict]:
        """``trainer.log_samples`` of this step's responses, spread evenly over all generated ones:
        prompt (as the policy saw it), response, reward, correctness, advantage and each term's score."""
        count = self.cfg.trainer.log_samples
        flat = [(g, j) for g in groups for j in range(g.size)]
        if count <= 0 or not flat:
            return []
        picks = sorted({int(round(x)) for x in np.linspace(0, len(flat) - 1, num=min(count, len(flat)))})
        chosen = [flat[k] for k in picks]
        prompts = self.tokenizer.batch_decode([g.prompt_ids for g, _ in chosen], skip_special_tokens=False)
        responses = self.tokenizer.batch_decode([g.responses[j] for g, j in chosen], skip_special_tokens=True)
        rows = []
        for k, (g, j), prompt, response in zip(picks, chosen, prompts, responses):
            row = self.train_data.rows[g.prompt_index] if g.prompt_index >= 0 else {}
            rows.append({"prompt_index": g.prompt_index, "data_source": row.get("data_source", ""),
                         "prompt": prompt, "response": response, "reward": float(g.rewards[j]),
                         "correct": bool(g.correct[j]), "truncated": bool(g.truncated[j]),
                         "response_tokens": len(g.responses[j]),
                         "advantage": float(g.advantages[j]) if g.advantages is not None else None,
                         "terms": scored.details[k] if k < len(scored.details) else {}})
        return rows

    def mix_in_buffer(self, groups: list[Group], informative_frac: float) -> tuple[list[Group], int]:
        """Selective Sample Buffer: replay stored groups into a starved batch, then store this one's."""
        sb = self.cfg.algorithm.sample_buffer
        if self.buffer is None:
            return groups, 0
        replayed: list[Group] = []
        if informative_frac < sb.min_informative_frac and len(self.buffer):
            k = max(1, round(sb.mix_ratio * self.cfg.trainer.prompts_per_step))
            rng = random.Random(f"{self.cfg.trainer.seed}-{self.step}-ssb")  # str seeds are stable across processes
            replayed = self.buffer.sample(k, rng)
        for g in groups:
            self.buffer.add(g)
        return groups + replayed, len(replayed)

    def check_reward_failures(self, scored: RewardScores) -> None:
        """Stop when every reward item failed in ``reward.max_failed_steps`` consecutive steps."""
        all_failed = scored.items > 0 and scored.failed == scored.items
        self.failed_reward_steps = self.failed_reward_steps + 1 if all_failed else 0
        limit = self.cfg.reward.max_failed_steps
        if all_failed:
            log.error("step %d: every one of %d reward items failed (%d in a row; the run stops at %d): %s",
                      self.step + 1, scored.items, self.failed_reward_steps, limit, scored.first_failure)
        if self.failed_reward_steps >= limit:
            raise RewardFailure(f"every reward failed or timed out in {limit} consecutive steps "
                                f"(reward.max_failed_steps); the last failure: {scored.first_failure}. Check the "
                                f"reward function (reward.fn / reward.terms / reward.routes), the data rows it reads "
                                f"and, for code, the sandbox service")

    def train_step(self) -> dict[str, float]:
        timer = PhaseTimer(self.progress)
        start = time.perf_counter()
        metrics = self._train_step(timer)
        timer.seconds["step"] = time.perf_counter() - start
        metrics.update(timer.metrics())
        return metrics

    def _train_step(self, timer: PhaseTimer) -> dict[str, float]:
        algo = self.cfg.algorithm
        stage, max_tokens = self.stage_limit()
        rollout = self.next_rollout(timer)
        sync_stats = self.start_next_rollout(timer)
        kept, generated, scored, filter_stats = rollout.kept, rollout.generated, rollout.scored, rollout.filter_stats
        self.check_reward_failures(scored)
        self.step_samples = self.sample_rows(generated, scored)
        train_groups, n_replayed = self.mix_in_buffer(kept, filter_stats["filter/informative_frac"])
        metrics = {
            **generated_metrics(generated), **scored.metrics(), **filter_stats, **trained_metrics(train_groups),
            "stage": float(stage),
            "stage/max_response_length": float(max_tokens),
            "buffer/replayed_groups": float(n_replayed),
            "buffer/size": float(len(self.buffer)) if self.buffer is not None else 0.0,
            "data/epoch": float(rollout.data_epoch),
            # response tokens the engines produced per second of generation (every refill round)
            "perf/gen_tokens_per_s": sum(g.response_tokens() for g in generated)
            / max(rollout.timer.seconds.get("generate", 0.0), 1e-9),
            # updates between the policy that generated the batch and the one it trains (off-policy: 1)
            "rollout/staleness": float(self.policy_version - rollout.policy_version),
            # the share of the batch's generation and scoring hidden behind the previous update
            "perf/overlap_frac": 1.0 - timer.seconds["wait_rollout"] / rollout.wall_s
            if "wait_rollout" in timer.seconds and rollout.wall_s > 0 else 0.0,
            **sync_stats,
        }
        if not train_groups:
            log.warning("step %d: no group has a non-zero advantage (all rewards equal, or masked); update skipped",
                        self.step + 1)
            metrics["actor/skipped_update"] = 1.0
            return metrics

        batch = batch_from_groups(train_groups)
        if self.parts.sleep_rollouts:
            with timer.phase("rollout_sleep"):
                self.rollouts.sleep(self.cfg.rollout.sleep_level)
        fresh = batch.per_response_token(batch.fresh)
        # the PPO ratio's denominator: the log-probs of the policy that sampled the tokens. On-policy that is
        # the learners' current policy, recomputed here; a batch generated by an older policy (off-policy)
        # divides by vLLM's own log-probs, except replayed groups, which carry none and count as on-policy
        behaviour_from_engine = self.cfg.trainer.off_policy_steps > 0 or rollout.policy_version != self.policy_version
        learner_log_probs = None
        with timer.phase("old_log_prob", f"{batch.num_sequences} sequences"):
            if not behaviour_from_engine or not fresh.all():
                learner_log_probs = self.learners.compute_log_probs(batch)
            old = learner_log_probs if not behaviour_from_engine else \
                torch.where(fresh, batch.rollout_log_probs, learner_log_probs if learner_log_probs is not None else 0.0)
            batch = batch.with_values(old_log_probs=old)
            if algo.kl.enabled:
                batch = batch.with_values(ref_log_probs=self.learners.compute_log_probs(batch, reference=True))
        # e_k: entropy estimated from the sampled tokens' log-probs (OR1's measure), before the update;
        # from this step's samples, or from every trained token when the batch is all replays
        measured = fresh if fresh.any() else torch.ones_like(fresh)
        rollout_entropy = -batch.old_log_probs[measured].sum().item() / max(int(measured.sum()), 1)
        entropy_coef = self.entropy.coef_for(rollout_entropy)
        with timer.phase("update", f"{len(train_groups)} groups"):
            actor_metrics = self.run_updates(batch, [g.size for g in train_groups], entropy_coef)
        self.entropy.observe(rollout_entropy)
        self.policy_version += 1
        if self.cfg.trainer.off_policy_steps == 0:
            with timer.phase("sync", "weights to vLLM"):
                metrics.update(self.sync_weights())
        if learner_log_probs is not None:
            # vLLM's log-probs vs the learner's for the same tokens: ~0 when weights are in sync (on-policy)
            metrics["rollout/logprob_abs_diff"] = ((learner_log_probs - batch.rollout_log_probs)[fresh].abs().sum()
                                                   .item() / max(int(fresh.sum()), 1))
        metrics.update({
            "adv/abs_mean": batch.advantages.abs().mean().item(),
            "rollout/entropy_estimate": rollout_entropy,
            "actor/entropy_coef": entropy_coef,
            "entropy/controller_coef": self.entropy.coef,
            # what reached the learners: tokens of the sequences (no padding travels) and their bytes
            "batch/tokens": float(batch.token_ids.numel()),
            "batch/bytes": float(batch.nbytes()),
            **actor_metrics,
        })
        return metrics

    def run_updates(self, batch: SequenceBatch, group_sizes: Sequence[int],
                    entropy_coef: float) -> dict[str, float]:
        """``algorithm.ppo_epochs`` passes over the batch in near-equal mini-batches of whole groups
        (``or1.algo.minibatch.plan_mini_batches``); groups of any size, none split or dropped."""
        a = self.cfg.algorithm
        rng = np.random.default_rng([self.cfg.trainer.seed, self.step, 0x9E])
        plan = plan_mini_batches(len(group_sizes), a.mini_batch_groups, a.ppo_epochs, rng)
        results = [self.learners.update(batch.select(group_rows(group_sizes, mini_batch)), entropy_coef)
                   for mini_batch in plan]
        merged = {k: float(np.mean([r[k] for r in results if k in r])) for k in results[0]}
        merged["actor/num_updates"] = float(len(results))
        return merged

    def sync_weights(self) -> dict[str, float]:
        """Push the learners' policy into every vLLM engine (bucketed; see LearnerGroup.push_weights)."""
        asleep = self.rollouts.asleep
        if asleep:
            self.rollouts.wake_up(["weights"])  # weights first: the KV cache is not needed for the push
        stats = self.learners.push_weights(self.rollouts, str(self.cfg.rollout.dtype), self.cfg.learner.sync_bucket_mb)
        if asleep:
            self.rollouts.wake_up(["kv_cache"])
        self.engine_version = self.policy_version
        return stats

    def val_max_tokens(self) -> int:
        """Validation's response limit: ``rollout.val_max_response_length``, else the longest stage's
        (the same at every step, so validations along a run compare)."""
        r = self.cfg.rollout
        return r.val_max_response_length or longest_response_limit(self.cfg)

    def validate(self) -> dict[str, float]:
        """avg@k and pass@k (k = ``rollout.val_n``) per data source (``val/<source>/avg@k``) and over
        every validation problem (``val/avg@k``, also ``val/acc``); see ``or1.evaluation``."""
        if self.val_data is None:
            return {}
        self.engines_current()  # off-policy: the batch in flight finished, the engines hold the policy validated
        timer = PhaseTimer(self.progress)
        indices = list(range(len(self.val_data)))
        r = self.cfg.rollout
        seeds = sampling_seeds(self.cfg.trainer.seed, 0, len(indices), VAL_STREAM)  # same every validation
        with timer.phase("validate", f"{len(indices)} problems x {r.val_n}"):
            samples, scored = self.generate_and_score(self.val_data, indices, r.val_n, r.val_temperature, seeds,
                                                      self.val_max_tokens(), timer)
        problems = score_problems(samples, scored.correct, scored.rewards, r.val_n,
                                  [row.get("data_source", "") for row in self.val_data.rows])
        k = r.val_n
        metrics = {"val/reward": scored.rewards.mean().item(),
                   "val/response_length": float(np.mean([len(s.token_ids) for s in samples])),
                   "time/validate": timer.seconds["validate"]}
        for source, figures in summarize(problems, k).items():
            prefix = "val" if source == ALL else f"val/{source or 'none'}"
            metrics[f"{prefix}/avg@{k}"] = figures[f"avg@{k}"]
            metrics[f"{prefix}/pass@{k}"] = figures[f"pass@{k}"]
        metrics["val/acc"] = metrics[f"val/avg@{k}"]  # the name older dashboards and the console line read
        return metrics

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, dict[str, float]]:
        cfg = self.cfg.trainer
        self.progress = Progress(cfg.total_steps, self.step, interval_s=cfg.progress_interval_s).start()
        try:
            return self._fit()
        finally:
            self.progress.close()
            self.progress = NoProgress()

    def _fit(self) -> dict[str, dict[str, float]]:
        cfg = self.cfg.trainer
        first_val = self.validate() if cfg.val_before_train and self.step == 0 else {}
        if first_val:
            self.logger.log(0, first_val)
        last_val: dict[str, float] = first_val
        while self.step < cfg.total_steps:
            self.progress.begin_step(self.step)
            metrics = self.train_step()
            self.step += 1
            self.logger.log_samples(self.step, self.step_samples)
            if self.step == cfg.total_steps or (cfg.val_every and self.step % cfg.val_every == 0):
                last_val = self.validate()
                metrics.update(last_val)
            self.logger.log(self.step, metrics)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.total_steps:
                self.save_checkpoint()
            self.progress.end_step()
        if cfg.save_final:
            with PhaseTimer(self.progress).phase("export", "final policy"):
                path = self.learners.save_hf(os.path.join(self.output_dir, "final"), self.cfg.model.path)
            with open(os.path.join(path, STATE_FILE), "w") as f:
                json.dump(self.state_dict(), f)
            log.info("final policy and trainer state written to %s", path)
        self.logger.close()
        return {"first_val": first_val, "last_val": last_val}

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The driver's algorithm state: what a resumed run needs besides weights and optimizer."""
        return {
            "step": self.step,
            "stage": self.stage_limit()[0],
            "sampler": self.sampler.state_dict(),  # data position and the mastered-prompt set
            "data_fingerprint": self.data_fingerprint,
            "entropy_controller": self.entropy.state_dict(),
            "informative_estimate": self.informative.state_dict(),
            "policy_version": self.policy_version,
            # off-policy: the next step's batch was generated before this checkpoint; it is saved with it
            # (IN_FLIGHT_FILE) so that a resumed run trains on the same batch
            "in_flight": self.pending is not None,
            "sample_buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "run_id": self.run_id,
            "world_size": self.cfg.learner.num_workers,
            "learner_backend": str(self.cfg.learner.backend),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.policy_version = state.get("policy_version", self.step)  # checkpoints before 2026-11-24: step
        sampler = state["sampler"]
        saved_fingerprint = state.get("data_fingerprint", self.data_fingerprint)
        if sampler.get("size", self.sampler.size) != self.sampler.size or saved_fingerprint != self.data_fingerprint:
            log.warning("the training data changed (%d prompts, checkpoint had %d; fingerprint %s, checkpoint had "
                        "%s): the data order and the mastered-prompt set restart", self.sampler.size,
                        sampler.get("size", self.sampler.size), self.data_fingerprint, saved_fingerprint)
        else:
            self.sampler.load_state_dict(sampler)
            log.info("data order resumed: epoch %d, prompt %d of %d (trainer.seed=%d), %d prompts mastered",
                     self.sampler.epoch, self.sampler.position, self.sampler.size, self.cfg.trainer.seed,
                     len(self.sampler.mastered))
        self.entropy.load_state_dict(state["entropy_controller"])
        if "informative_estimate" in state:  # checkpoints before 2026-11-24 start the estimate afresh
            self.informative.load_state_dict(state["informative_estimate"])
        if self.buffer is not None and state.get("sample_buffer"):
            self.buffer.load_state_dict(state["sample_buffer"])
        self.run_id = state.get("run_id", self.run_id)

    def save_checkpoint(self) -> Path:
        """A complete, atomic checkpoint of this step (see or1/checkpoint.py for the layout)."""
        timer = PhaseTimer(self.progress)
        with timer.phase("checkpoint", f"step {self.step}"):
            if isinstance(self.pending, Future):
                self.pending = self.pending.result()  # the batch in flight is part of the state
            tmp = self.checkpoints.begin(self.step)
            if self.pending is not None:
                torch.save(self.pending, tmp / IN_FLIGHT_FILE)
            self.learners.save_checkpoint(str(tmp))  # shards, per-rank state, hf/ (config + tokenizer)
            if os.environ.get(FAULT_ENV) == f"after_shards:{self.step}":
                os.kill(os.getpid(), signal.SIGKILL)
            OmegaConf.save(OmegaConf.structured(self.cfg), tmp / "config.yaml")
            with open(tmp / STATE_FILE, "w") as f:
                json.dump(self.state_dict(), f)
            final = self.checkpoints.commit(tmp, self.cfg.trainer.keep_last)
        log.info("checkpoint %s written in %.1fs", final, timer.seconds["checkpoint"])
        return final

    def resume(self, path: Path | None) -> bool:
        """Load a checkpoint into the learners, the driver and vLLM; False when starting fresh."""
        if path is None:
            return False
        state = json.loads((path / STATE_FILE).read_text())
        self.learners.load_checkpoint(str(path))
        self.load_state_dict(state)
        if state.get("in_flight"):
            self.pending = torch.load(path / IN_FLIGHT_FILE, weights_only=False)
        self.sync_weights()  # vLLM started from model.path; give it the checkpoint's policy
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def shutdown(self) -> None:
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)
        for close in self.parts.on_close:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - shutting down: report, go on with the rest
                log.warning("shutdown: %r", exc)


def generate_and_score(rollouts: Rollouts, rewards: Rewards, tokenizer, data: PromptDataset, indices: list[int],
                       n: int, temperature: float, top_p: float, max_tokens: int, seeds: list[int] | None,
                       timer: PhaseTimer | None = None) -> tuple[list, RewardScores]:
    """``n`` responses to each prompt ``indices`` names, decoded and scored against its row (training,
    validation, ``or1.eval`` and ``or1.data.filter`` alike)."""
    timer = timer or PhaseTimer()
    prompts = [data.prompt_ids[i] for i in indices]
    if not hasattr(rollouts, "generate_stream"):  # a component that only answers whole batches
        with timer.phase("generate", f"{len(indices)} prompts x {n}"):
            samples = rollouts.generate(prompts, n, temperature, top_p, max_tokens, seeds)
        with timer.phase("reward", f"{len(samples)} responses"):
            texts = tokenizer.batch_decode([s.token_ids for s in samples], skip_special_tokens=True)
            scored = rewards.score(texts, [data.rows[indices[s.prompt_index]] for s in samples])
        return samples, scored

    # Prompts are scored as the engines finish them, a chunk at a time on a scoring thread, while later
    # prompts still generate: "reward" is only the scoring left once generation has ended. Each prompt
    # gets its own scores (score_groups), put back in prompt order: what scoring the batch at once gives.
    by_prompt_index: dict[int, tuple[list, RewardScores]] = {}
    chunks: list[tuple[float, Future]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="or1-reward") as scorer:
        with timer.phase("generate", f"{len(indices)} prompts x {n}"):
            for chunk in rollouts.generate_stream(prompts, n, temperature, top_p, max_tokens, seeds):
                chunks.append((time.perf_counter(), scorer.submit(score_prompts, rewards, tokenizer, data, indices,
                                                                   chunk)))
        with timer.phase("reward", f"{len(indices) * n} responses"):
            for arrived, future in chunks:
                scored_prompts, done = future.result()
                by_prompt_index.update(scored_prompts)
                timer.latencies["reward_latency"].append(done - arrived)
    ordered = [by_prompt_index[i] for i in range(len(indices))]
    return [s for members, _ in ordered for s in members], RewardScores.concat([scores for _, scores in ordered])


def score_prompts(rewards: Rewards, tokenizer, data: PromptDataset, indices: list[int], samples: list
                  ) -> tuple[dict[int, tuple[list, RewardScores]], float]:
    """Score whole prompts' samples (each prompt's together, in any prompt order) in one submission;
    returns ``{prompt_index: (its samples, its scores)}`` and when scoring ended."""
    members: dict[int, list] = {}
    for smp in samples:
        members.setdefault(smp.prompt_index, []).append(smp)
    flat = [smp for group in members.values() for smp in group]
    texts = tokenizer.batch_decode([smp.token_ids for smp in flat], skip_special_tokens=True)
    scores = rewards.score_groups(texts, [data.rows[indices[smp.prompt_index]] for smp in flat],
                                  [len(group) for group in members.values()])
    return {index: (group, sc) for (index, group), sc in zip(members.items(), scores)}, time.perf_counter()


def longest_response_limit(cfg: OR1Config) -> int:
    """The longest response limit of the run: of its stages, or rollout.max_response_length."""
    return max([st.max_response_length for st in cfg.algorithm.stages], default=cfg.rollout.max_response_length)


def generated_metrics(groups: list[Group]) -> dict[str, float]:
    """What was sampled this step, every group of every refill round."""
    lengths = torch.tensor([len(r) for g in groups for r in g.responses], dtype=torch.float32)
    return {
        "reward/mean": torch.cat([g.rewards for g in groups]).mean().item(),
        "acc/mean": torch.cat([g.correct for g in groups]).mean().item(),
        "response_length/mean": lengths.mean().item(),
        "response_length/max": lengths.max().item(),
        "response/truncated_frac": torch.cat([g.truncated for g in groups]).float().mean().item(),
    }


def trained_metrics(groups: list[Group]) -> dict[str, float]:
    """What the update actually trains on: the kept groups and any replayed ones (``train/*``)."""
    if not groups:
        return {"train/groups": 0.0, "train/sequences": 0.0, "train/tokens": 0.0}
    lengths = torch.tensor([len(r) for g in groups for r in g.responses], dtype=torch.float32)
    return {
        "train/groups": float(len(groups)),
        "train/sequences": float(len(lengths)),
        "train/tokens": float(lengths.sum().item()),  # response tokens: the token mean's denominator
        "train/acc": torch.cat([g.correct for g in groups]).mean().item(),
        "train/reward": torch.cat([g.rewards for g in groups]).mean().item(),
        "train/response_length": lengths.mean().item(),
        "train/truncated_frac": torch.cat([g.truncated for g in groups]).float().mean().item(),
    }
