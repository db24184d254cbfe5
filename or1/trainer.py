"""The driver loop: sample prompts -> generate -> score -> advantages -> update -> push weights.

The driver holds no model. It owns the data order, the reward functions and the bookkeeping;
the heavy work runs in Ray actors (``or1.workers``). Each phase is timed and logged.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from or1.algo.advantages import BASELINES, TRUNCATION_MASKS, apply_truncation_mask
from or1.algo.entropy import AdaptiveEntropyController
from or1.algo.filters import informative_groups, mastered_groups
from or1.algo.losses import KL_ESTIMATORS, LOSS_AGG_MODES
from or1.algo.sample_buffer import BufferedGroup, SelectiveSampleBuffer
from or1.algo.stages import stage_at
from or1.batch import build_batch, select_rows
from or1.checkpoint import FAULT_ENV, STATE_FILE, CheckpointDirs, resolve_resume
from or1.config import OR1Config
from or1.data.dataset import EpochSampler, PromptDataset
from or1.metrics import MetricsLogger
from or1.rewards.manager import RewardManager, RewardScores
from or1.workers.backends import BACKENDS
from or1.workers.rollout import Sample

log = logging.getLogger("or1")


VAL_STREAM = 1 << 16  # training rounds use streams 0, 1, 2, ... (refill rounds), validation this one


def sampling_seeds(seed: int, step: int, count: int, stream: int = 0) -> list[int]:
    """Per-prompt vLLM seeds, a pure function of (run seed, step, stream): replays are reproducible."""
    rng = np.random.default_rng([seed, stream, step])
    return [int(x) for x in rng.integers(0, 2**31 - 1, size=count)]


@dataclass
class Group:
    """The n responses to one prompt, with what the step learned about them."""

    prompt_index: int  # -1 for groups replayed from the sample buffer
    prompt_ids: list[int]
    responses: list[list[int]]
    rollout_log_probs: list[list[float]] | None  # None for replayed groups
    rewards: torch.Tensor  # [n]
    correct: torch.Tensor  # [n]
    truncated: torch.Tensor  # [n] bool
    advantages: torch.Tensor | None = None  # [n]


def make_groups(data: PromptDataset, indices: list[int], samples: list[Sample], scored: RewardScores,
                n: int) -> list[Group]:
    groups = []
    for g, index in enumerate(indices):
        members = samples[g * n:(g + 1) * n]
        assert all(s.prompt_index == g for s in members), "vLLM returned a group out of order"
        groups.append(Group(index, data.prompt_ids[index], [s.token_ids for s in members],
                            [s.logprobs for s in members], scored.rewards[g * n:(g + 1) * n],
                            scored.correct[g * n:(g + 1) * n],
                            torch.tensor([s.truncated for s in members], dtype=torch.bool)))
    return groups


class Trainer:
    def __init__(self, cfg: OR1Config):
        import ray
        from transformers import AutoTokenizer

        from or1.placement import check_cluster, plan_placement, start_workers

        self.cfg = cfg
        algo = cfg.algorithm
        self.output_dir = cfg.trainer.output_dir
        os.makedirs(self.output_dir, exist_ok=True)
        # Everything that can be checked cheaply is checked before any actor starts.
        validate_algorithm_config(cfg)
        self.plan = plan_placement(cfg)
        connect_ray(cfg)
        check_cluster(self.plan, ray.nodes())  # before anything heavy: say what is missing, do not hang
        self.rewards = RewardManager(cfg.reward)  # imports and checks every reward function
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path,
                                                       trust_remote_code=cfg.model.trust_remote_code)
        d = cfg.data
        self.train_data = PromptDataset.from_files(d.train_files, self.tokenizer, d.prompt_key,
                                                   d.max_prompt_length, d.apply_chat_template)
        self.val_data = (PromptDataset.from_files(d.val_files, self.tokenizer, d.prompt_key,
                                                  d.max_prompt_length, d.apply_chat_template)
                         if d.val_files else None)
        self.sampler = EpochSampler(len(self.train_data), seed=cfg.trainer.seed, shuffle=d.shuffle)
        self.entropy_ctl = AdaptiveEntropyController(
            algo.entropy.target, algo.entropy.delta, algo.entropy.min_coef, algo.entropy.max_coef)
        self.buffer = SelectiveSampleBuffer(algo.sample_buffer.capacity) if algo.sample_buffer.enabled else None
        resume_from = resolve_resume(cfg.trainer.resume, self.output_dir)
        if resume_from is None and cfg.trainer.init_from and cfg.trainer.resume != "off":
            resume_from = resolve_resume(cfg.trainer.init_from, self.output_dir)
        if resume_from is not None:
            check_resume_compatible(resume_from, cfg)  # before anything expensive starts

        t0 = time.time()
        self.workers = start_workers(cfg, self.plan)
        self.learners, self.rollouts = self.workers.learners, self.workers.rollouts
        # colocated on GPUs: vLLM gives its memory back while the learners work
        self.sleeps = self.plan.mode == "colocated"
        self.rewards.start_reward_models()
        ray.get([a.ready.remote() for a in self.rollouts.actors]
                + [a.__ray_ready__.remote() for a in self.learners.actors])
        log.info("actors ready in %.1fs: %d vLLM engine(s), %d %s learner rank(s), placement %s",
                 time.time() - t0, len(self.rollouts.actors), self.learners.world_size, cfg.learner.backend,
                 self.plan.mode)
        self.step = 0
        self.run_id = uuid.uuid4().hex[:12]
        self.checkpoints = CheckpointDirs(self.output_dir)
        resumed = self.resume(resume_from)
        self.logger = MetricsLogger(self.output_dir, list(cfg.trainer.loggers),
                                    OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
                                    cfg.trainer.wandb_mode, cfg.trainer.project, cfg.trainer.experiment_name,
                                    run_id=self.run_id, resume_step=self.step if resumed else None)

    # --- phases ----------------------------------------------------------------------------
    def max_response_length(self) -> tuple[int, int]:
        """(stage index, response limit) for the current step."""
        stages = self.cfg.algorithm.stages
        if not stages:
            return 0, self.cfg.rollout.max_response_length
        i = stage_at(self.step, [st.steps for st in stages])
        return i, stages[i].max_response_length

    def generate(self, data: PromptDataset, indices: list[int], n: int, temperature: float,
                 seeds: list[int] | None, max_tokens: int) -> list[Sample]:
        prompts = [data.prompt_ids[i] for i in indices]
        return self.rollouts.generate(prompts, n, temperature, self.cfg.rollout.top_p, max_tokens, seeds)

    def score(self, data: PromptDataset, indices: list[int], samples: list[Sample]) -> RewardScores:
        texts = self.tokenizer.batch_decode([s.token_ids for s in samples], skip_special_tokens=True)
        return self.rewards.score(texts, [data.rows[indices[s.prompt_index]] for s in samples])

    def sync_weights(self) -> dict[str, float]:
        """Push the learners' policy into every vLLM engine (bucketed; see LearnerGroup.push_weights)."""
        asleep = self.rollouts.asleep
        if asleep:
            self.rollouts.wake_up(["weights"])  # weights first: the KV cache is not needed for the push
        stats = self.learners.push_weights(self.rollouts, self.cfg.rollout.dtype, self.cfg.learner.sync_bucket_mb)
        if asleep:
            self.rollouts.wake_up(["kv_cache"])
        return stats

    def validate(self) -> dict[str, float]:
        if self.val_data is None:
            return {}
        t0 = time.time()
        indices = list(range(len(self.val_data)))
        r = self.cfg.rollout
        seeds = sampling_seeds(self.cfg.trainer.seed, 0, len(indices), VAL_STREAM)  # same every validation
        samples = self.generate(self.val_data, indices, r.val_n, r.val_temperature, seeds,
                                self.max_response_length()[1])
        scored = self.score(self.val_data, indices, samples)
        return {"val/acc": scored.correct.mean().item(), "val/reward": scored.rewards.mean().item(),
                "val/response_length": float(np.mean([len(s.token_ids) for s in samples])),
                "time/validate": time.time() - t0}

    def collect_groups(self, max_tokens: int) -> tuple[list[Group], list[Group], dict[str, float]]:
        """Generate and score groups; returns (groups to train on, every group generated, stats).

        With ``filter.zero_variance`` groups whose rewards are all equal are dropped; with
        ``filter.refill`` more prompts are generated (at most ``max_refill_rounds`` extra
        rounds) until ``batch_size`` informative groups are kept.
        """
        cfg, f = self.cfg, self.cfg.algorithm.filter
        n, target = cfg.rollout.n, cfg.trainer.batch_size
        rounds = 1 + (f.max_refill_rounds if f.refill and f.zero_variance else 0)
        kept: list[Group] = []
        generated: list[Group] = []
        informative_flags: list[bool] = []  # one per generated group, every round
        stats = {"filter/refill_rounds": 0.0, "filter/mastered_new": 0.0, "reward/errors": 0.0,
                 "reward/timeouts": 0.0, "time/generate": 0.0, "time/reward": 0.0}
        for round_ in range(rounds):
            need = target - len(kept)
            if need <= 0:
                break
            if round_ > 0:
                stats["filter/refill_rounds"] += 1
            indices = self.sampler.next_batch(need)
            t = time.time()
            samples = self.generate(self.train_data, indices, n, cfg.rollout.temperature,
                                    sampling_seeds(cfg.trainer.seed, self.step, len(indices), round_), max_tokens)
            stats["time/generate"] += time.time() - t
            t = time.time()
            scored = self.score(self.train_data, indices, samples)
            stats["time/reward"] += time.time() - t
            for k, v in scored.metrics.items():  # failures add up over rounds; the rest: first round's
                if k in ("reward/errors", "reward/timeouts"):
                    stats[k] += v
                else:
                    stats.setdefault(k, v)
            groups = make_groups(self.train_data, indices, samples, scored, n)
            generated += groups
            rewards = torch.stack([g.rewards for g in groups])
            informative = informative_groups(rewards)
            informative_flags += informative.tolist()
            if f.drop_mastered:
                done = mastered_groups(torch.stack([g.correct for g in groups]), f.mastered_threshold)
                stats["filter/mastered_new"] += self.sampler.mark_mastered(
                    [g.prompt_index for g, m in zip(groups, done.tolist()) if m])
            kept += [g for g, keep in zip(groups, informative.tolist()) if keep or not f.zero_variance]
        kept = kept[:target]
        stats.update({
            "filter/groups_generated": float(len(generated)),
            "filter/groups_kept": float(len(kept)),
            "filter/groups_dropped": float(len(generated) - len(kept)) if f.zero_variance else 0.0,
            "filter/informative_frac": float(np.mean(informative_flags)),
            "filter/mastered_total": float(len(self.sampler.mastered)),
        })
        return kept, generated, stats

    def assign_advantages(self, groups: list[Group]) -> None:
        if not groups:
            return
        a = self.cfg.algorithm
        adv = apply_truncation_mask(torch.stack([g.rewards for g in groups]),
                                    torch.stack([g.truncated for g in groups]),
                                    a.truncation_mask, a.adv_eps, a.norm_adv_by_std, a.adv_baseline)
        for g, row in zip(groups, adv):
            g.advantages = row

    def mix_in_buffer(self, groups: list[Group], informative_frac: float) -> tuple[list[Group], int]:
        """Selective Sample Buffer: replay stored groups into a starved batch, then store this one."""
        sb = self.cfg.algorithm.sample_buffer
        replayed: list[Group] = []
        if self.buffer is not None:
            if informative_frac < sb.min_informative_frac and len(self.buffer):
                k = max(1, round(sb.mix_ratio * self.cfg.trainer.batch_size))
                rng = random.Random(f"{self.cfg.trainer.seed}-{self.step}-ssb")  # str seeds are stable across processes
                for b in self.buffer.sample(k, rng):
                    n = len(b.responses)
                    replayed.append(Group(-1, b.prompt_ids, b.responses, None, torch.zeros(n), torch.zeros(n),
                                          torch.zeros(n, dtype=torch.bool), torch.tensor(b.advantages)))
            for g in groups:
                self.buffer.add(BufferedGroup(g.prompt_ids, g.responses, g.advantages.tolist()))
        return groups + replayed, len(replayed)

    def train_step(self) -> dict[str, float]:
        algo = self.cfg.algorithm
        timings: dict[str, float] = {}
        t_step = time.time()
        stage, max_tokens = self.max_response_length()

        kept, generated, filter_stats = self.collect_groups(max_tokens)  # refill rounds included
        self.assign_advantages(generated)
        train_groups, n_replayed = self.mix_in_buffer(kept, filter_stats["filter/informative_frac"])

        all_rewards = torch.cat([g.rewards for g in generated])
        lengths = torch.tensor([len(r) for g in generated for r in g.responses], dtype=torch.float32)
        truncated = torch.cat([g.truncated for g in generated]).float()
        metrics = {
            "reward/mean": all_rewards.mean().item(),
            "acc/mean": torch.cat([g.correct for g in generated]).mean().item(),
            "response_length/mean": lengths.mean().item(),
            "response_length/max": lengths.max().item(),
            "response/truncated_frac": truncated.mean().item(),
            "stage": float(stage),
            "stage/max_response_length": float(max_tokens),
            "buffer/replayed_groups": float(n_replayed),
            "buffer/size": float(len(self.buffer)) if self.buffer is not None else 0.0,
            "data/epoch": float(self.sampler.epoch),
            **filter_stats,
        }
        if not train_groups:
            log.warning("step %d: every group was filtered out (all rewards equal); update skipped",
                        self.step + 1)
            metrics.update({"actor/skipped_update": 1.0, "time/step": time.time() - t_step, **timings})
            return metrics

        rows = [(g, i) for g in train_groups for i in range(len(g.responses))]
        batch = build_batch([g.prompt_ids for g, _ in rows], [g.responses[i] for g, i in rows],
                            self.tokenizer.pad_token_id, torch.stack([g.advantages[i] for g, i in rows]),
                            [g.rollout_log_probs[i] if g.rollout_log_probs else [0.0] * len(g.responses[i])
                             for g, i in rows])
        fresh = torch.tensor([g.rollout_log_probs is not None for g, _ in rows]).unsqueeze(1)

        if self.sleeps:
            t = time.time()
            self.rollouts.sleep(self.cfg.rollout.sleep_level)
            timings["time/rollout_sleep"] = time.time() - t
        t = time.time()
        batch["old_log_probs"] = self.learners.compute_log_probs(batch)
        if algo.use_kl_loss:
            batch["ref_log_probs"] = self.learners.compute_log_probs(batch, reference=True)
        timings["time/old_log_prob"] = time.time() - t

        mask = batch["response_mask"]
        fresh_mask = mask * fresh
        # e_k: entropy estimated from the sampled tokens' log-probs (OR1's measure), before the update
        rollout_entropy = -(batch["old_log_probs"] * fresh_mask).sum().item() / max(fresh_mask.sum().item(), 1.0)
        if algo.entropy.adaptive:
            entropy_coef = self.entropy_ctl.bonus_coef(rollout_entropy)
        else:
            entropy_coef = algo.entropy.fixed_coef

        t = time.time()
        actor_metrics = self.run_updates(batch, len(train_groups), entropy_coef)
        timings["time/update"] = time.time() - t
        if algo.entropy.adaptive:
            self.entropy_ctl.update(rollout_entropy)

        sync_stats = self.sync_weights()

        metrics.update({
            "adv/abs_mean": (batch["advantages"].abs()).mean().item(),
            # vLLM's log-probs vs the learner's for the same tokens: ~0 when weights are in sync
            "rollout/logprob_abs_diff": ((batch["old_log_probs"] - batch["rollout_log_probs"]).abs()
                                         * fresh_mask).sum().item() / max(fresh_mask.sum().item(), 1.0),
            "rollout/entropy_estimate": rollout_entropy,
            "actor/entropy_coef": entropy_coef,
            "entropy/controller_coef": self.entropy_ctl.coef if algo.entropy.adaptive else entropy_coef,
            **sync_stats, **actor_metrics, **timings,
        })
        metrics["time/step"] = time.time() - t_step
        return metrics

    def run_updates(self, batch: dict[str, torch.Tensor], num_groups: int, entropy_coef: float) -> dict[str, float]:
        """``ppo_epochs`` passes over the batch in mini-batches of ``mini_batch_size`` groups.

        Groups stay whole inside a mini-batch. With one epoch and one mini-batch (OR1's default)
        the batch is used as is; otherwise the group order is reshuffled every epoch (seeded).
        """
        actor = self.cfg.actor
        rows_per_group = batch["input_ids"].shape[0] // num_groups
        mb = actor.mini_batch_size or num_groups
        rng = np.random.default_rng([self.cfg.trainer.seed, self.step, 0x9E])
        results = []
        for _ in range(actor.ppo_epochs):
            order = np.arange(num_groups) if (actor.ppo_epochs == 1 and mb >= num_groups) \
                else rng.permutation(num_groups)
            for start in range(0, num_groups, mb):
                rows = [int(g) * rows_per_group + i for g in order[start:start + mb] for i in range(rows_per_group)]
                results.append(self.learners.update(select_rows(batch, rows), entropy_coef))
        merged = {k: float(np.mean([r[k] for r in results if k in r])) for k in results[0]}
        merged["actor/num_updates"] = float(len(results))
        return merged

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg = self.cfg.trainer
        first_val = self.validate() if cfg.val_before_train and self.step == 0 else {}
        if first_val:
            self.logger.log(0, first_val)
        last_val: dict[str, float] = first_val
        while self.step < cfg.total_steps:
            metrics = self.train_step()
            self.step += 1
            if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.total_steps:
                last_val = self.validate()
                metrics.update(last_val)
            if self.step == cfg.total_steps:
                last_val = self.validate()
                metrics.update(last_val)
            self.logger.log(self.step, metrics)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.total_steps:
                self.save_checkpoint()
        if cfg.save_final:
            path = self.learners.save_hf(os.path.join(self.output_dir, "final"), self.cfg.model.path)
            with open(os.path.join(path, STATE_FILE), "w") as f:
                json.dump(self.state_dict(), f)
            log.info("final policy and trainer state written to %s", path)
        self.logger.close()
        return {"first_val": first_val, "last_val": last_val}

    def state_dict(self) -> dict:
        """The driver's algorithm state: what a resumed run needs besides weights and optimizer."""
        return {
            "step": self.step,
            "stage": self.max_response_length()[0],
            "sampler": self.sampler.state_dict(),  # data position and the mastered-prompt set
            "entropy_controller": self.entropy_ctl.state_dict(),
            "sample_buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "run_id": self.run_id,
            "world_size": self.cfg.learner.num_workers,
            "learner_backend": self.cfg.learner.backend,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        sampler = state["sampler"]
        if sampler.get("size", self.sampler.size) != self.sampler.size:
            log.warning("the training data changed (%d prompts, checkpoint had %d): the data order and the "
                        "mastered-prompt set restart", self.sampler.size, sampler["size"])
        else:
            self.sampler.load_state_dict(sampler)
        self.entropy_ctl.load_state_dict(state["entropy_controller"])
        if self.buffer is not None and state.get("sample_buffer"):
            self.buffer.load_state_dict(state["sample_buffer"])
        self.run_id = state.get("run_id", self.run_id)

    def save_checkpoint(self) -> Path:
        """A complete, atomic checkpoint of this step (see or1/checkpoint.py for the layout)."""
        from transformers import AutoConfig

        t0 = time.time()
        tmp = self.checkpoints.begin(self.step)
        self.learners.save_checkpoint(str(tmp))
        if os.environ.get(FAULT_ENV) == f"after_shards:{self.step}":
            os.kill(os.getpid(), signal.SIGKILL)
        AutoConfig.from_pretrained(self.cfg.model.path, trust_remote_code=self.cfg.model.trust_remote_code
                                   ).save_pretrained(tmp / "hf")
        self.tokenizer.save_pretrained(tmp / "hf")
        OmegaConf.save(OmegaConf.structured(self.cfg), tmp / "config.yaml")
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(self.state_dict(), f)
        final = self.checkpoints.commit(tmp, self.cfg.trainer.keep_last)
        log.info("checkpoint %s written in %.1fs", final, time.time() - t0)
        return final

    def resume(self, path: Path | None) -> bool:
        """Load a checkpoint into the learners, the driver and vLLM; False when starting fresh."""
        if path is None:
            return False
        state = json.loads((path / STATE_FILE).read_text())
        self.learners.load_checkpoint(str(path))
        self.load_state_dict(state)
        self.sync_weights()  # vLLM started from model.path; give it the checkpoint's policy
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def shutdown(self) -> None:
        if getattr(self, "workers", None) is not None:
            self.workers.remove()
        if getattr(self, "rewards", None) is not None:
            self.rewards.close()


def connect_ray(cfg: OR1Config) -> None:
    """Join the cluster at ``trainer.ray_address`` or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.trainer.ray_address
    try:
        ray.init(address=address, num_cpus=None if address else cfg.trainer.ray_num_cpus,
                 include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise RuntimeError(f"trainer.ray_address={address!r}: no running Ray cluster reachable ({e}). Start one "
                           "(`ray start --head` here, `ray start --address=HEAD:6379` on the other nodes) or set "
                           "trainer.ray_address=null to start a local Ray") from None


ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "vocab_size")


def check_resume_compatible(path: Path, cfg: OR1Config) -> None:
    """Refuse a checkpoint of another model or world size; log every other changed setting."""
    from transformers import AutoConfig

    saved = json.loads((path / "hf" / "config.json").read_text())
    current = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code).to_dict()
    different = {k: (saved.get(k), current.get(k)) for k in ARCHITECTURE_KEYS if saved.get(k) != current.get(k)}
    if different:
        raise ValueError(f"checkpoint {path} is of another model than model.path={cfg.model.path!r}: "
                         + ", ".join(f"{k} {a} != {b}" for k, (a, b) in different.items()))
    state = json.loads((path / STATE_FILE).read_text())
    saved_backend, backend = state.get("learner_backend", "fsdp"), cfg.learner.backend
    if saved_backend != backend:
        raise ValueError(f"checkpoint {path} was written by the {saved_backend} learner backend; this run uses "
                         f"learner.backend={backend} (export it with `python -m or1.export` and start from the "
                         f"exported model instead)")
    saved_world, world = state.get("world_size", 1), cfg.learner.num_workers
    if saved_world != world:
        if backend != "fsdp":
            raise ValueError(f"checkpoint {path} was written by {saved_world} learner ranks; this run has {world}, "
                             f"and DeepSpeed checkpoints load only at the same world size")
        log.info("resume: %d learner ranks load a checkpoint of %d (FSDP2 reshards on load)", world, saved_world)
    before = _flatten(OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=True))
    now = _flatten(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            log.info("resume: %s changed from %r to %r", key, before.get(key), now.get(key))


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def validate_algorithm_config(cfg: OR1Config) -> None:
    """Reject inconsistent settings at start-up with a message naming the field."""
    a, r = cfg.algorithm, cfg.rollout
    if a.adv_baseline not in BASELINES:
        raise ValueError(f"algorithm.adv_baseline must be one of {BASELINES}, got {a.adv_baseline!r}")
    if a.truncation_mask not in TRUNCATION_MASKS:
        raise ValueError(f"algorithm.truncation_mask must be one of {TRUNCATION_MASKS}, got {a.truncation_mask!r}")
    if a.loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"algorithm.loss_agg_mode must be one of {LOSS_AGG_MODES}, got {a.loss_agg_mode!r}")
    if a.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"algorithm.kl_estimator must be one of {KL_ESTIMATORS}, got {a.kl_estimator!r}")
    if cfg.actor.dual_clip is not None and cfg.actor.dual_clip <= 1:
        raise ValueError(f"actor.dual_clip must be > 1 (or null), got {cfg.actor.dual_clip}")
    lr = cfg.learner
    if lr.backend not in BACKENDS:
        raise ValueError(f"learner.backend must be one of {BACKENDS}, got {lr.backend!r}")
    if lr.compute_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"learner.compute_dtype must be float32, bfloat16 or float16, got {lr.compute_dtype!r}")
    if lr.backend == "deepspeed" and lr.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"learner.zero_stage must be 0..3, got {lr.zero_stage}")
    if lr.sync_bucket_mb <= 0:
        raise ValueError(f"learner.sync_bucket_mb must be > 0, got {lr.sync_bucket_mb}")
    if r.sleep_level not in (1, 2):
        raise ValueError(f"rollout.sleep_level must be 1 or 2, got {r.sleep_level}")
    if cfg.actor.ppo_epochs < 1 or cfg.actor.mini_batch_size < 0:
        raise ValueError("actor.ppo_epochs must be >= 1 and actor.mini_batch_size >= 0")
    if r.n < 2:
        log.warning("rollout.n=%d: groups of one response have zero advantage; nothing will be learned", r.n)
    longest = max([st.max_response_length for st in a.stages], default=r.max_response_length)
    needed = cfg.data.max_prompt_length + longest
    if r.max_model_len < needed:
        raise ValueError(f"rollout.max_model_len={r.max_model_len} cannot hold data.max_prompt_length + "
                         f"the longest response limit = {needed}")
