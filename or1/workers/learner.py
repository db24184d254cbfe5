"""The learner: a Ray actor that owns one data-parallel rank of the policy in torch.

One actor per rank; the backend (``learner.backend``: FSDP2 or DeepSpeed ZeRO, see backends.py)
shards the model over all ranks. The process group is NCCL on GPUs and gloo on CPU; the same
code runs on both, so what CI tests on CPU is what runs on clusters. The maths lives in
``or1.algo``; this file only moves tensors through it. The driver talks to all ranks at once
through ``or1.workers.group.LearnerGroup``.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from or1.algo.losses import aggregate_loss, kl_penalty, ppo_clip_loss, truncated_is_weights
from or1.algo.packing import MicroBatch, build_micro_batch, plan_micro_batches
from or1.batch import SequenceBatch
from or1.config import AlgorithmConfig, LearnerConfig, ModelConfig, OptimConfig
from or1.workers.backends import make_backend, torch_dtype, weight_buckets
from or1.workers.varlen_attention import check_packed_attention
from or1.workers.weight_transfer import WeightPacker

# Metrics each rank reports as its share of a global sum (the group adds them up); every other
# metric is the same on all ranks (grad norm, lr, token counts) or a time (the group takes the max).
RANK_PARTIAL_METRICS = ("actor/pg_loss", "actor/entropy", "actor/clipfrac", "actor/approx_kl", "actor/kl_loss",
                        "actor/tis_weight", "actor/computed_tokens", "actor/micro_batches")

# what a rank with fewer micro-batches than the others computes (with zero loss) to keep the collectives in step
IDLE_SEQUENCE = SequenceBatch.from_lists([[0]], [[0]])
# two sequences packed into one row at start-up: the model must route their attention through or1's varlen kernel
PROBE_SEQUENCES = SequenceBatch.from_lists([[1, 2], [3]], [[4], [5, 6, 7]])


class Learner:
    """Wrapped with ``ray.remote`` by the driver; a plain class so tests can also run it in-process."""

    def __init__(self, model_cfg: ModelConfig, optim_cfg: OptimConfig | None = None,
                 algo_cfg: AlgorithmConfig | None = None, learner_cfg: LearnerConfig | None = None,
                 rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1", master_port: int = 29500,
                 seed: int = 0, shared_fs_marker: str | None = None, cpu_cores: list[int] | None = None):
        """``cpu_cores``: CPU runs whose engines generate while the learners train
        (``trainer.off_policy_steps=1``): this rank runs on these cores only, one torch thread each."""
        if cpu_cores:
            os.sched_setaffinity(0, cpu_cores)
            torch.set_num_threads(len(cpu_cores))
        if shared_fs_marker is not None:
            check_shared_filesystem(shared_fs_marker, rank)
        self.model_cfg = model_cfg
        self.optim = optim_cfg or OptimConfig()
        self.learner_cfg = learner_cfg or LearnerConfig()
        self.algo = algo_cfg or AlgorithmConfig()
        self.rank, self.world_size = rank, world_size
        if self.learner_cfg.torch_threads > 0 and not cpu_cores:
            torch.set_num_threads(self.learner_cfg.torch_threads)
        torch.manual_seed(seed)
        # Inside a Ray actor each rank sees only its own GPU (device 0). DeepSpeed reads these.
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    init_method=f"tcp://{master_addr}:{master_port}",
                                    rank=rank, world_size=world_size)
        # The frozen reference policy exists only when the KL loss is on (OR1 runs without it).
        self.backend = make_backend(self.learner_cfg.backend, model_cfg, self.optim, self.learner_cfg,
                                    self.device, world_size, with_reference=self.algo.kl.enabled)
        self.model, self.ref_model = self.backend.model, self.backend.ref_model
        if self.learner_cfg.padding_free:  # a model that ignores packed attention would mix sequences silently
            probe = build_micro_batch(PROBE_SEQUENCES, [0, 1], packed=True)
            for model in (self.model, self.ref_model):
                if model is not None:  # a collective under FSDP2 / ZeRO-3: every rank runs it
                    check_packed_attention(model, self.backend.hf_model.config.num_hidden_layers,
                                           lambda: self._token_stats(probe, with_entropy=False, model=model))
        self._packer = WeightPacker()  # reuses its (pinned, on GPUs) staging buffer for every push
        release_cached_memory()

    def has_reference_model(self) -> bool:
        return self.ref_model is not None

    # --- forward passes --------------------------------------------------------------------
    def _micro_batch_plan(self, batch: SequenceBatch) -> list[list[int] | None]:
        """This rank's micro-batches (``or1.algo.packing.plan_micro_batches`` over its sequences), then
        ``None`` entries up to the largest count of any rank: sharded backends run collectives in every
        forward and backward, so every rank must run as many micro-batches as every other."""
        cfg = self.learner_cfg
        plan: list[list[int] | None] = list(plan_micro_batches(
            batch.sequence_lengths().tolist(), cfg.max_tokens_per_micro_batch, cfg.micro_batch_sequences,
            padded=not cfg.padding_free))
        if self.world_size > 1:
            count = torch.tensor([len(plan)], device=self.device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            plan += [None] * (int(count.item()) - len(plan))
        return plan

    def _micro_batch(self, batch: SequenceBatch, rows: list[int] | None) -> MicroBatch:
        """The packed (or padded) input of ``rows``; for ``None`` (a rank with fewer micro-batches than
        others) a two-token stand-in whose loss the caller multiplies by zero."""
        if rows is None:
            return build_micro_batch(IDLE_SEQUENCE, [0], self.learner_cfg.padding_free)
        return build_micro_batch(batch, rows, self.learner_cfg.padding_free)

    def _token_stats(self, mb: MicroBatch, with_entropy: bool, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob (and entropy) of every response token of the micro-batch, ``[R]`` each, from one
        forward; the head projects only the positions that predict response tokens."""
        model = model or self.model
        head = getattr(model, "module", model).lm_head  # a DeepSpeed engine wraps the HF model
        head.select(mb.logit_positions.to(self.device), mb.targets.to(self.device), with_entropy)
        try:
            stats = model(**mb.model_inputs(self.device), use_cache=False).logits
        finally:
            head.select(None, None)
        return stats[:, 0], stats[:, 1]

    @torch.no_grad()
    def compute_log_probs(self, batch: SequenceBatch, reference: bool = False) -> torch.Tensor:
        """Log-prob of every response token (``[batch.num_response_tokens]``, the batch's per-token
        order) under the current policy, or under the frozen reference policy with ``reference=True``.
        Every rank calls it together, each with its own sequences."""
        if reference and self.ref_model is None:
            raise RuntimeError("no reference model: set algorithm.kl.enabled=true to load one")
        model = self.ref_model if reference else self.model
        model.eval()
        out = torch.zeros(batch.num_response_tokens, dtype=torch.float32)
        for rows in self._micro_batch_plan(batch):
            mb = self._micro_batch(batch, rows)
            logp, _ = self._token_stats(mb, with_entropy=False, model=model)
            if rows is not None:
                out[mb.response_index] = logp.float().cpu()
        return out

    # --- the policy update -----------------------------------------------------------------
    def update(self, batch: SequenceBatch, entropy_coef: float = 0.0) -> dict[str, float]:
        """One optimizer step on this rank's sequences (``batch.old_log_probs`` and ``advantages`` set;
        with the KL loss on, ``ref_log_probs`` too). Every rank calls it together.

            loss = agg(clipped PG) - entropy_coef * agg(entropy) + kl_coef * agg(KL)

        ``agg`` (``algorithm.loss_agg_mode``) normalises by token / sequence counts of the whole
        batch (all micro-batches, all ranks), so micro-batching, packing and data parallelism
        reproduce the single-batch gradient exactly (OR1's token_mean: every response token weighs
        the same). Sequences without response tokens count for nothing.
        """
        t0 = time.time()
        if batch.old_log_probs is None:
            raise ValueError("update needs batch.old_log_probs (compute_log_probs first)")
        self.model.train()
        counts = torch.tensor([float(batch.num_response_tokens), float((batch.response_lengths > 0).sum())])
        if self.world_size > 1:
            counts = counts.to(self.device)
            dist.all_reduce(counts)
            counts = counts.cpu()
        num_tokens, num_seqs = counts[0], counts[1]
        if num_tokens.item() == 0:
            return {"actor/skipped_update": 1.0, "actor/num_tokens": 0.0}
        a = self.algo
        mode, use_kl = a.loss_agg_mode, a.kl.enabled
        if use_kl and batch.ref_log_probs is None:
            raise ValueError("algorithm.kl.enabled needs batch.ref_log_probs")
        if a.tis_cap is not None and batch.rollout_log_probs is None:
            raise ValueError("algorithm.tis_cap needs batch.rollout_log_probs (vLLM's log-probs of the tokens)")

        sums = {"pg_loss": 0.0, "entropy": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "kl_loss": 0.0, "tis_weight": 0.0}
        computed_tokens = 0
        self.backend.zero_grad()
        plan = self._micro_batch_plan(batch)
        for k, rows in enumerate(plan):
            mb = self._micro_batch(batch, rows)
            last = k == len(plan) - 1
            logp, entropy = self._token_stats(mb, with_entropy=True)
            if rows is None:  # a stand-in: the same collectives as a real micro-batch, no gradient
                self.backend.backward(logp.sum() * 0.0, last_micro_batch=last)
                continue
            computed_tokens += mb.computed_tokens
            token_sequence = mb.token_sequence.to(self.device)

            def agg(values, how=mode):
                return aggregate_loss(values, token_sequence, mb.response_lengths, how, num_tokens, num_seqs)

            old = batch.old_log_probs[mb.response_index].to(self.device)
            pg, clipped = ppo_clip_loss(logp, old, mb.advantages.to(self.device), a.clip_low, a.clip_high,
                                        a.dual_clip)
            if a.tis_cap is not None:
                weights = truncated_is_weights(old, batch.rollout_log_probs[mb.response_index].to(self.device),
                                               a.tis_cap)
                # replayed rows carry no vLLM log-probs: their ratio's denominator is all there is
                sampled_now = batch.per_response_token(batch.fresh)[mb.response_index].to(self.device)
                weights = torch.where(sampled_now, weights, torch.ones_like(weights))
                pg = pg * weights
                sums["tis_weight"] += agg(weights, "token_mean").item()
            pg_loss = agg(pg)
            entropy_loss = agg(entropy)
            loss = pg_loss - entropy_coef * entropy_loss if entropy_coef > 0 else pg_loss
            if use_kl:
                ref = batch.ref_log_probs[mb.response_index].to(self.device)
                kl_loss = agg(kl_penalty(logp, ref, a.kl.estimator))
                loss = loss + a.kl.coef * kl_loss
                sums["kl_loss"] += kl_loss.item()
            # the backends average gradients over ranks; the loss is already a global mean
            self.backend.backward(loss * self.world_size, last_micro_batch=last)
            with torch.no_grad():
                sums["pg_loss"] += pg_loss.item()
                # logged as a plain token mean whatever the aggregation, so runs stay comparable
                sums["entropy"] += agg(entropy, "token_mean").item()
                sums["clipfrac"] += agg(clipped).item()
                # k3 estimator of KL(old || new), a health signal only
                log_ratio = logp - old
                sums["approx_kl"] += agg(torch.exp(log_ratio) - 1 - log_ratio).item()
        lr_used = self.backend.lr()
        grad_norm = self.backend.step(self.optim.grad_clip if self.optim.grad_clip > 0 else float("inf"))
        # gradients freed now, not at the next update: colocated, vLLM generates in that memory
        self.backend.zero_grad()
        if not use_kl:
            del sums["kl_loss"]
        if a.tis_cap is None:
            del sums["tis_weight"]
        metrics = {f"actor/{k}": v for k, v in sums.items()}
        metrics["actor/grad_norm"] = grad_norm
        metrics["actor/lr"] = lr_used
        metrics["actor/num_tokens"] = float(num_tokens)
        metrics["actor/skipped_update"] = 0.0
        # this rank's share of the work: what it computed (padding included) and in how many forwards
        metrics["actor/computed_tokens"] = float(computed_tokens)
        metrics["actor/micro_batches"] = float(sum(rows is not None for rows in plan))
        metrics["time/learner_update"] = time.time() - t0
        release_cached_memory()
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, path: str) -> None:
        """Sharded model and optimizer state (every rank writes its own shards; nothing is
        gathered), plus this rank's LR scheduler and torch RNG states; rank 0 also writes ``hf/``
        (the model's config and tokenizer, what ``python -m or1.export`` needs). All ranks call it."""
        self.backend.save(path)
        if self.rank == 0:
            from transformers import AutoTokenizer

            hf_dir = os.path.join(path, "hf")
            self.backend.hf_model.config.save_pretrained(hf_dir)
            AutoTokenizer.from_pretrained(self.model_cfg.path, trust_remote_code=self.model_cfg.trust_remote_code
                                          ).save_pretrained(hf_dir)
        torch.save({"cpu": torch.get_rng_state(), "scheduler": self.backend.scheduler.state_dict(),
                    "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
                   os.path.join(path, f"rank{self.rank}_state.pt"))

    def load_checkpoint(self, path: str) -> None:
        self.backend.load(path)
        # A checkpoint of fewer ranks (FSDP2 reshards on load) has no state file for this rank:
        # the schedule is the same on every rank, and the RNG state only feeds dropout.
        rank_file = os.path.join(path, f"rank{self.rank}_state.pt")
        extra = torch.load(rank_file if os.path.exists(rank_file) else os.path.join(path, "rank0_state.pt"),
                           weights_only=False)
        torch.set_rng_state(extra["cpu"])
        if extra["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(extra["cuda"])
        self.backend.scheduler.load_state_dict(extra["scheduler"])

    # --- weights out -------------------------------------------------------------------------
    def weight_bucket_plan(self, dtype: str, bucket_mb: float) -> list[list[str]]:
        """Parameter names in sync buckets of about ``bucket_mb`` MiB (whole decoder layers)."""
        return weight_buckets(self.backend.parameter_shapes(), torch_dtype(dtype).itemsize,
                              int(bucket_mb * 2**20))

    def export_bucket(self, names: list[str], dtype: str):
        """The named parameters, gathered from all ranks and packed for
        ``RolloutWorker.update_weights`` (``or1.workers.weight_transfer``). A collective: every rank
        calls it; rank 0 returns the buffer, the others None (one copy enters Ray's object store)."""
        full = self.backend.gather(names)
        if self.rank != 0:
            del full
            release_cached_memory()
            return None
        cast = torch_dtype(dtype)
        packed = self._packer.pack({n: t.to(cast) for n, t in full.items()})
        del full
        release_cached_memory()
        return packed

    def full_parameters(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Unsharded parameters by Hugging Face name (tied weights once), on CPU: the whole model in
        every rank's memory, for tests and debugging only (``save_hf`` streams instead).

        Every rank must call this (gathering is a collective); all ranks get the full tensors.
        """
        full = self.backend.gather([n for n, _ in self.backend.parameter_shapes()])
        return {n: (t.to(dtype) if dtype is not None else t).cpu() for n, t in full.items()}

    def save_hf(self, out_dir: str, tokenizer_path: str | None = None, max_shard_gib: float = 5.0) -> str:
        """Write the policy as a Hugging Face model directory (loadable by transformers and vLLM), in
        ``model.dtype``. A collective: the weights are gathered one sync bucket (whole decoder layers,
        ``learner.sync_bucket_mb``) at a time, moved to host memory and written by rank 0 into
        safetensors shards as they arrive; no rank ever holds more than one bucket of full tensors."""
        from or1.workers.hf_io import ModelDirWriter

        dtype = torch_dtype(self.model_cfg.dtype)
        buckets = self.weight_bucket_plan(str(self.model_cfg.dtype), self.learner_cfg.sync_bucket_mb)
        writer = None
        if self.rank == 0:
            shapes = dict(self.backend.parameter_shapes())
            writer = ModelDirWriter(out_dir, [(n, shapes[n], dtype) for names in buckets for n in names],
                                    int(max_shard_gib * 2**30))
        for names in buckets:
            full = self.backend.gather(names)
            if writer is not None:
                writer.add({n: t.to(device="cpu", dtype=dtype) for n, t in full.items()})
            del full
            release_cached_memory()
        if writer is not None:
            hf = self.backend.hf_model
            writer.finish([hf.config, getattr(hf, "generation_config", None)], tokenizer_path)
        return out_dir


def check_shared_filesystem(marker: str, rank: int) -> None:
    """Every rank writes its own checkpoint shards under ``trainer.output_dir`` and reads them back on
    resume, so every node must see the same directory: here, the file the driver just wrote there."""
    if not os.path.exists(marker):
        import socket

        raise RuntimeError(
            f"learner rank {rank} on {socket.gethostname()} cannot see {marker}, which the driver wrote into "
            "trainer.output_dir: every node must share the filesystem holding trainer.output_dir (each rank "
            "writes its checkpoint shards there and reads them back on resume). Mount it at the same path on "
            "every node (NFS, Lustre, ...), or run on one node")


def release_cached_memory() -> None:
    """Give memory the allocator caches back to the device (colocated with vLLM, what the learner
    keeps cached after init, an update or a push is memory vLLM's next wake-up cannot have)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
