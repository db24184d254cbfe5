"""The driver loop: sample prompts -> generate -> score -> advantages -> update -> push weights.

The driver holds no model. It owns the data order, the reward functions and the bookkeeping;
the heavy work runs in Ray actors (``or1.workers``). Each phase is timed and logged.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf

from or1.algo.advantages import group_advantages
from or1.batch import build_batch
from or1.config import OR1Config
from or1.data.dataset import EpochSampler, PromptDataset
from or1.metrics import MetricsLogger
from or1.rewards.loader import load_reward_fn, reward_value
from or1.workers.rollout import Sample

log = logging.getLogger("or1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN_STREAM, VAL_STREAM = 0, 1


def sampling_seeds(seed: int, step: int, count: int, stream: int = TRAIN_STREAM) -> list[int]:
    """Per-prompt vLLM seeds, a pure function of (run seed, step, stream): replays are reproducible."""
    rng = np.random.default_rng([seed, stream, step])
    return [int(x) for x in rng.integers(0, 2**31 - 1, size=count)]


@dataclass
class Scored:
    rewards: torch.Tensor  # [num_samples]
    correct: torch.Tensor  # [num_samples] 0/1
    extras: dict[str, float]  # means of the reward function's extra metrics


class Trainer:
    def __init__(self, cfg: OR1Config):
        import ray
        from transformers import AutoTokenizer

        from or1.workers.learner import Learner
        from or1.workers.rollout import RolloutWorker

        self.cfg = cfg
        self.output_dir = cfg.trainer.output_dir
        os.makedirs(self.output_dir, exist_ok=True)
        # Resolve the reward function before anything expensive starts: a bad spec fails in seconds.
        self.reward_fn = load_reward_fn(cfg.reward.fn)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path,
                                                       trust_remote_code=cfg.model.trust_remote_code)
        d = cfg.data
        self.train_data = PromptDataset.from_files(d.train_files, self.tokenizer, d.prompt_key,
                                                   d.max_prompt_length, d.apply_chat_template)
        self.val_data = (PromptDataset.from_files(d.val_files, self.tokenizer, d.prompt_key,
                                                  d.max_prompt_length, d.apply_chat_template)
                         if d.val_files else None)
        self.sampler = EpochSampler(len(self.train_data), seed=cfg.trainer.seed, shuffle=d.shuffle)
        needed = d.max_prompt_length + cfg.rollout.max_response_length
        if cfg.rollout.max_model_len < needed:
            raise ValueError(f"rollout.max_model_len={cfg.rollout.max_model_len} cannot hold "
                             f"data.max_prompt_length + rollout.max_response_length = {needed}")

        if not ray.is_initialized():
            ray.init(address=cfg.trainer.ray_address, num_cpus=cfg.trainer.ray_num_cpus,
                     include_dashboard=False, logging_level=logging.WARNING)
        t0 = time.time()
        self.rollout = ray.remote(num_cpus=cfg.rollout.num_cpus)(RolloutWorker).remote(
            cfg.model.path, cfg.rollout, cfg.trainer.seed)
        self.learner = ray.remote(num_cpus=cfg.actor.num_cpus)(Learner).remote(
            cfg.model, cfg.actor, 0, 1, "127.0.0.1", free_port(), cfg.trainer.seed)
        ray.get(self.rollout.ready.remote())
        ray.get(self.learner.__ray_ready__.remote())
        log.info("actors ready in %.1fs (rollout: vLLM, learner: FSDP2)", time.time() - t0)
        self.logger = MetricsLogger(self.output_dir, list(cfg.trainer.loggers),
                                    OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
                                    cfg.trainer.wandb_mode, cfg.trainer.project, cfg.trainer.experiment_name)
        self.step = 0

    # --- phases ----------------------------------------------------------------------------
    def generate(self, data: PromptDataset, indices: list[int], n: int, temperature: float,
                 seeds: list[int] | None) -> list[Sample]:
        import ray

        prompts = [data.prompt_ids[i] for i in indices]
        return ray.get(self.rollout.generate.remote(prompts, n, temperature, self.cfg.rollout.top_p,
                                                    self.cfg.rollout.max_response_length, seeds))

    def score(self, data: PromptDataset, indices: list[int], samples: list[Sample]) -> Scored:
        texts = self.tokenizer.batch_decode([s.token_ids for s in samples], skip_special_tokens=True)
        rewards, correct, extras = [], [], {}
        for text, s in zip(texts, samples):
            value, extra = reward_value(self.reward_fn(text, data.rows[indices[s.prompt_index]]))
            rewards.append(value)
            # A response counts as correct at score >= 1 unless the function reports "acc" itself.
            correct.append(float(extra.pop("acc", value >= 1.0)))
            for k, v in extra.items():
                extras.setdefault(k, []).append(v)
        return Scored(torch.tensor(rewards), torch.tensor(correct),
                      {k: float(np.mean(v)) for k, v in extras.items()})

    def sync_weights(self) -> int:
        import ray

        payload = self.learner.export_weights.remote(self.cfg.rollout.dtype)  # stays in Ray's store
        return ray.get(self.rollout.update_weights.remote(payload))

    def validate(self) -> dict[str, float]:
        if self.val_data is None:
            return {}
        t0 = time.time()
        indices = list(range(len(self.val_data)))
        r = self.cfg.rollout
        seeds = sampling_seeds(self.cfg.trainer.seed, 0, len(indices), VAL_STREAM)  # same every validation
        samples = self.generate(self.val_data, indices, r.val_n, r.val_temperature, seeds)
        scored = self.score(self.val_data, indices, samples)
        return {"val/acc": scored.correct.mean().item(), "val/reward": scored.rewards.mean().item(),
                "val/response_length": float(np.mean([len(s.token_ids) for s in samples])),
                "time/validate": time.time() - t0}

    def train_step(self) -> dict[str, float]:
        import ray

        cfg, n = self.cfg, self.cfg.rollout.n
        timings: dict[str, float] = {}
        t_step = time.time()

        t = time.time()
        indices = self.sampler.next_batch(cfg.trainer.batch_size)
        samples = self.generate(self.train_data, indices, n, cfg.rollout.temperature,
                                sampling_seeds(cfg.trainer.seed, self.step, len(indices)))
        timings["time/generate"] = time.time() - t

        t = time.time()
        scored = self.score(self.train_data, indices, samples)
        timings["time/reward"] = time.time() - t

        advantages = group_advantages(scored.rewards.view(len(indices), n), cfg.algorithm.adv_eps,
                                      cfg.algorithm.norm_adv_by_std).flatten()
        batch = build_batch([self.train_data.prompt_ids[indices[s.prompt_index]] for s in samples],
                            [s.token_ids for s in samples], self.tokenizer.pad_token_id, advantages,
                            [s.logprobs for s in samples])

        t = time.time()
        batch["old_log_probs"] = ray.get(self.learner.compute_log_probs.remote(batch))
        timings["time/old_log_prob"] = time.time() - t

        t = time.time()
        actor_metrics = ray.get(self.learner.update.remote(batch))
        timings["time/update"] = time.time() - t

        t = time.time()
        synced_bytes = self.sync_weights()
        timings["time/sync"] = time.time() - t

        mask = batch["response_mask"]
        lengths = torch.tensor([len(s.token_ids) for s in samples], dtype=torch.float32)
        metrics = {
            "reward/mean": scored.rewards.mean().item(),
            "acc/mean": scored.correct.mean().item(),
            "response_length/mean": lengths.mean().item(),
            "response_length/max": lengths.max().item(),
            "response/truncated_frac": float(np.mean([s.truncated for s in samples])),
            "adv/abs_mean": advantages.abs().mean().item(),
            # vLLM's log-probs vs the learner's for the same tokens: ~0 when weights are in sync
            "rollout/logprob_abs_diff": ((batch["old_log_probs"] - batch["rollout_log_probs"]).abs()
                                         * mask).sum().item() / max(mask.sum().item(), 1.0),
            "sync/bytes": float(synced_bytes),
            "data/epoch": float(self.sampler.epoch),
            **{f"reward/{k}": v for k, v in scored.extras.items()},
            **actor_metrics, **timings,
        }
        metrics["time/step"] = time.time() - t_step
        return metrics

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg = self.cfg.trainer
        first_val = self.validate() if cfg.val_before_train else {}
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
        if cfg.save_final:
            import ray

            path = ray.get(self.learner.save_hf.remote(os.path.join(self.output_dir, "final"), self.cfg.model.path))
            log.info("final policy written to %s", path)
        self.logger.close()
        return {"first_val": first_val, "last_val": last_val}

    def shutdown(self) -> None:
        import ray

        for actor in (getattr(self, "rollout", None), getattr(self, "learner", None)):
            if actor is not None:
                ray.kill(actor)
