"""The learner: a Ray actor that owns the policy in torch, sharded with FSDP2.

One actor per data-parallel rank. The process group is NCCL on GPUs and gloo on CPU; with world
size 1 on CPU the same code path runs (FSDP2 over a one-rank mesh), so what CI tests is what
runs on clusters. The maths lives in ``or1.algo``; this file only moves tensors through it.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from or1.algo.losses import aggregate_loss, kl_penalty, ppo_clip_loss, token_log_probs_and_entropy
from or1.batch import slice_batch
from or1.config import ActorConfig, AlgorithmConfig, ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


class Learner:
    """Wrapped with ``ray.remote`` by the driver; a plain class so tests can also run it in-process."""

    def __init__(self, model_cfg: ModelConfig, actor_cfg: ActorConfig, rank: int = 0, world_size: int = 1,
                 master_addr: str = "127.0.0.1", master_port: int = 29500, seed: int = 0,
                 algo_cfg: AlgorithmConfig | None = None):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from transformers import AutoModelForCausalLM

        self.cfg = actor_cfg
        self.algo = algo_cfg or AlgorithmConfig()
        self.rank, self.world_size = rank, world_size
        if actor_cfg.torch_threads > 0:
            torch.set_num_threads(actor_cfg.torch_threads)
        torch.manual_seed(seed)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    init_method=f"tcp://{master_addr}:{master_port}",
                                    rank=rank, world_size=world_size)
        mesh = init_device_mesh(self.device.type, (world_size,))

        def load_sharded():
            model = AutoModelForCausalLM.from_pretrained(model_cfg.path, dtype=torch_dtype(model_cfg.dtype),
                                                         trust_remote_code=model_cfg.trust_remote_code)
            model.to(self.device)
            # Shard each decoder layer, then the root (embeddings, final norm, head): the usual FSDP2 unit.
            for layer in model.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            return model

        self.model = model = load_sharded()
        # The frozen reference policy exists only when the KL loss is on (OR1 runs without it).
        self.ref_model = None
        if self.algo.use_kl_loss:
            self.ref_model = load_sharded().eval()
            self.ref_model.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=actor_cfg.lr, betas=tuple(actor_cfg.betas),
                                           weight_decay=actor_cfg.weight_decay)
        warmup = actor_cfg.lr_warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup > 0 else 1.0)

    def has_reference_model(self) -> bool:
        return self.ref_model is not None

    # --- forward passes --------------------------------------------------------------------
    def _forward(self, mb: dict[str, torch.Tensor], with_entropy: bool, model=None):
        logits = (model or self.model)(input_ids=mb["input_ids"].to(self.device),
                            attention_mask=mb["attention_mask"].to(self.device), use_cache=False).logits
        return token_log_probs_and_entropy(logits, mb["input_ids"].to(self.device), with_entropy)

    @torch.no_grad()
    def compute_log_probs(self, batch: dict[str, torch.Tensor], reference: bool = False) -> torch.Tensor:
        """Log-prob of every token (``[B, L]``, aligned with ``input_ids``) under the current
        policy, or under the frozen reference policy with ``reference=True``."""
        if reference and self.ref_model is None:
            raise RuntimeError("no reference model: set algorithm.use_kl_loss=true to load one")
        model = self.ref_model if reference else self.model
        model.eval()
        out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
        mbs = self.cfg.micro_batch_size
        for start in range(0, out.shape[0], mbs):
            mb = slice_batch(batch, start, start + mbs)
            logp, _ = self._forward(mb, with_entropy=False, model=model)
            out[start:start + mbs, : logp.shape[1]] = logp.float().cpu()
        return out

    # --- the policy update -----------------------------------------------------------------
    def update(self, batch: dict[str, torch.Tensor], entropy_coef: float = 0.0) -> dict[str, float]:
        """One optimizer step on ``batch`` (needs ``old_log_probs`` and ``advantages``; with the
        KL loss on, ``ref_log_probs`` too).

            loss = agg(clipped PG) - entropy_coef * agg(entropy) + kl_coef * agg(KL)

        ``agg`` (``algorithm.loss_agg_mode``) normalises by token / sequence counts of the whole
        batch (all micro-batches, all ranks), so gradient accumulation reproduces the
        single-batch gradient exactly (OR1's token_mean: every response token weighs the same).
        """
        t0 = time.time()
        self.model.train()
        mask_all = batch["response_mask"]
        counts = torch.stack([mask_all.sum(), torch.tensor(float(mask_all.shape[0]))])
        if self.world_size > 1:
            counts = counts.to(self.device)
            dist.all_reduce(counts)
            counts = counts.cpu()
        num_tokens, num_seqs = counts[0], counts[1]
        if num_tokens.item() == 0:
            return {"actor/skipped_update": 1.0, "actor/num_tokens": 0.0}
        mode = self.algo.loss_agg_mode
        use_kl = self.algo.use_kl_loss

        def agg(values, mask):
            return aggregate_loss(values, mask, mode, num_tokens, num_seqs)

        sums = {"pg_loss": 0.0, "entropy": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "kl_loss": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        mbs = self.cfg.micro_batch_size
        for start in range(0, mask_all.shape[0], mbs):
            mb = slice_batch(batch, start, start + mbs)
            mask = mb["response_mask"].to(self.device)
            logp, entropy = self._forward(mb, with_entropy=True)
            old = mb["old_log_probs"].to(self.device)
            adv = mb["advantages"].to(self.device).unsqueeze(1)
            pg, clipped = ppo_clip_loss(logp, old, adv, self.cfg.clip_low, self.cfg.clip_high, self.cfg.dual_clip)
            pg_loss = agg(pg, mask)
            entropy_loss = agg(entropy, mask)
            loss = pg_loss - entropy_coef * entropy_loss if entropy_coef > 0 else pg_loss
            if use_kl:
                kl_loss = agg(kl_penalty(logp, mb["ref_log_probs"].to(self.device), self.algo.kl_estimator), mask)
                loss = loss + self.algo.kl_coef * kl_loss
                sums["kl_loss"] += kl_loss.item()
            loss.backward()
            with torch.no_grad():
                sums["pg_loss"] += pg_loss.item()
                # logged as a plain token mean whatever the aggregation, so runs stay comparable
                sums["entropy"] += aggregate_loss(entropy, mask, "token_mean", num_tokens, num_seqs).item()
                sums["clipfrac"] += agg(clipped, mask).item()
                # k3 estimator of KL(old || new), a health signal only
                log_ratio = logp - old
                sums["approx_kl"] += agg(torch.exp(log_ratio) - 1 - log_ratio, mask).item()
        lr_used = self.optimizer.param_groups[0]["lr"]
        grad_norm = self._clip_and_step()
        if not use_kl:
            del sums["kl_loss"]
        metrics = {f"actor/{k}": v for k, v in sums.items()}
        metrics["actor/grad_norm"] = grad_norm
        metrics["actor/lr"] = lr_used
        metrics["actor/num_tokens"] = float(num_tokens)
        metrics["actor/skipped_update"] = 0.0
        metrics["time/learner_update"] = time.time() - t0
        return metrics

    def _clip_and_step(self) -> float:
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm = float(norm)
        if not torch.isfinite(torch.tensor(norm)):
            # A non-finite gradient would poison the weights; skip the step and say so.
            self.optimizer.zero_grad(set_to_none=True)
            return norm
        self.optimizer.step()
        self.scheduler.step()
        return norm

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, path: str) -> None:
        """Sharded model and optimizer state with torch distributed checkpoint (every rank writes
        its own shards; nothing is gathered, so saving does not add a full copy to memory), plus
        this rank's LR scheduler and torch RNG states. All ranks must call it."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(path, "learner"))
        torch.save({"cpu": torch.get_rng_state(), "scheduler": self.scheduler.state_dict(),
                    "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
                   os.path.join(path, f"rank{self.rank}_state.pt"))

    def load_checkpoint(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=os.path.join(path, "learner"))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        extra = torch.load(os.path.join(path, f"rank{self.rank}_state.pt"), weights_only=False)
        torch.set_rng_state(extra["cpu"])
        if extra["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(extra["cuda"])
        self.scheduler.load_state_dict(extra["scheduler"])

    # --- weights out -------------------------------------------------------------------------
    def full_parameters(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Unsharded parameters by Hugging Face name (tied weights once), on CPU.

        Every rank must call this (gathering is a collective); all ranks get the full tensors.
        """
        out = {}
        for name, param in self.model.named_parameters():
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            full = full.detach()
            out[name] = (full.to(dtype) if dtype is not None else full).cpu()
        return out

    def export_weights(self, dtype: str) -> bytes:
        """The policy serialised for ``RolloutWorker.update_weights`` (rank 0's copy)."""
        from or1.workers.rollout import serialize_weights

        return serialize_weights(self.full_parameters(torch_dtype(dtype)))

    def save_hf(self, out_dir: str, tokenizer_path: str | None = None) -> str:
        """Write the policy as a Hugging Face model directory (loadable by transformers and vLLM)."""
        from transformers import AutoTokenizer

        params = self.full_parameters()
        if self.rank == 0:
            tmp = out_dir + ".tmp"
            os.makedirs(tmp, exist_ok=True)
            self.model.save_pretrained(tmp, state_dict=params)
            if tokenizer_path:
                AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(tmp)
            if os.path.exists(out_dir):
                import shutil

                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        return out_dir
