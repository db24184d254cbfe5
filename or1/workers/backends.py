"""Learner backends: where the sharded model, its optimizer and its checkpoints live.

``Learner`` (or1/workers/learner.py) owns the loss and the micro-batch loop and talks to a backend
only through the small interface below, so FSDP2 and DeepSpeed ZeRO train the same policy with
the same arithmetic (``learner.backend=fsdp|deepspeed``).

Both backends average gradients over the data-parallel ranks when they reduce them. or1's loss is
already divided by the token (or sequence) count of the *global* batch, so the learner scales each
rank's loss by the world size before ``backward``: the reduced gradient is then the exact gradient
of the global loss.
"""

from __future__ import annotations

import math
import os
import re

import torch

from or1.config import DType, LearnerBackend, LearnerConfig, ModelConfig, OptimConfig
from or1.workers.model_init import build_fsdp_model, build_zero3_model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: DType | str) -> torch.dtype:
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def warmup_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int):
    """Linear warm-up from 0 to the optimizer's lr over ``warmup_steps`` steps, then constant."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup_steps) if warmup_steps > 0 else 1.0)


def load_hf_model(model_cfg: ModelConfig, learner_cfg: LearnerConfig, trainable: bool):
    """The whole model in this process (DeepSpeed ZeRO stages 0-2 replicate the parameters on every
    rank anyway); sharded backends build theirs with ``or1.workers.model_init`` instead."""
    from transformers import AutoModelForCausalLM

    from or1.workers.model_init import adapt_for_training

    model = AutoModelForCausalLM.from_pretrained(model_cfg.path, dtype=torch_dtype(model_cfg.dtype),
                                                 trust_remote_code=model_cfg.trust_remote_code)
    return adapt_for_training(model, learner_cfg, trainable)


class FSDP2Backend:
    """PyTorch FSDP2 (``fully_shard``): each decoder layer, then the root, sharded over all ranks."""

    def __init__(self, model_cfg: ModelConfig, optim_cfg: OptimConfig, learner_cfg: LearnerConfig,
                 device: torch.device, world_size: int, with_reference: bool):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (world_size,))
        compute = torch_dtype(learner_cfg.compute_dtype)
        # parameters are cast to the compute dtype for forward/backward; gradients reduce in the master dtype
        mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch_dtype(model_cfg.dtype))

        def shard(model):
            for layer in model.model.layers:
                fully_shard(layer, mesh=mesh, mp_policy=mp)
            fully_shard(model, mesh=mesh, mp_policy=mp)

        def load_sharded(trainable: bool):
            # built on the meta device, sharded, then each rank reads only its shards: no process
            # ever holds the whole model (or1/workers/model_init.py)
            return build_fsdp_model(model_cfg, learner_cfg, device, shard, trainable)

        self.model = load_sharded(trainable=True)
        self.ref_model = None
        if with_reference:
            self.ref_model = load_sharded(trainable=False).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
                                           weight_decay=optim_cfg.weight_decay)
        self.scheduler = warmup_scheduler(self.optimizer, optim_cfg.lr_warmup_steps)
        self.hf_model = self.model

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        loss.backward()

    def step(self, max_norm: float) -> float:
        """Clip, then step unless the gradient is non-finite (which would poison the weights)."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not torch.isfinite(torch.tensor(norm)):
            self.zero_grad()
            return norm
        self.optimizer.step()
        self.scheduler.step()
        return norm

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(n, tuple(p.shape)) for n, p in self.model.named_parameters()]  # DTensor: the global shape

    def gather(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Full tensors of ``names`` (a collective: every rank calls it with the same names)."""
        params = dict(self.model.named_parameters())
        return {n: (params[n].full_tensor() if hasattr(params[n], "full_tensor") else params[n]).detach()
                for n in names}

    def save(self, path: str) -> None:
        """Sharded model and optimizer with torch distributed checkpoint: each rank writes its shards."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(path, "learner"))

    def load(self, path: str) -> None:
        """DCP reshards on load, so a checkpoint of another world size loads too."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=os.path.join(path, "learner"))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


class DeepSpeedBackend:
    """DeepSpeed ZeRO (stage ``learner.zero_stage``, default 3) with or1's own AdamW and LR schedule.

    The micro-batch loop marks the gradient-accumulation boundary itself (the number of
    micro-batches varies from step to step) and scales nothing by DeepSpeed's accumulation steps.
    """

    def __init__(self, model_cfg: ModelConfig, optim_cfg: OptimConfig, learner_cfg: LearnerConfig,
                 device: torch.device, world_size: int, with_reference: bool):
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        self.config = deepspeed_config(optim_cfg, learner_cfg)
        self._hf_ds_config = None
        zero3 = learner_cfg.zero_stage == 3
        if zero3:
            from transformers.integrations.deepspeed import HfDeepSpeedConfig

            # While this object lives, transformers builds models under zero.Init: every parameter is
            # partitioned as it is created, and each rank then reads only its partition of the weights.
            self._hf_ds_config = HfDeepSpeedConfig(self.config)

        def load(trainable: bool):
            if zero3:
                return build_zero3_model(model_cfg, learner_cfg, trainable)
            return load_hf_model(model_cfg, learner_cfg, trainable)

        model = load(trainable=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
                                      weight_decay=optim_cfg.weight_decay)
        self.scheduler = warmup_scheduler(optimizer, optim_cfg.lr_warmup_steps)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 config=self.config, dist_init_required=False)
        self.model = self.engine
        self.hf_model = self.engine.module
        self.ref_model = None
        if with_reference:
            ref_config = {k: v for k, v in self.config.items() if k != "gradient_clipping"}
            ref = load(trainable=False).eval().requires_grad_(False)
            self.ref_model = deepspeed.initialize(model=ref, config=ref_config, dist_init_required=False)[0]

    def zero_grad(self) -> None:
        pass  # DeepSpeed clears its gradient partitions after every optimizer step

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last_micro_batch)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, max_norm: float) -> float:
        # clipping is DeepSpeed's (config gradient_clipping = actor.grad_clip)
        self.engine.step()
        self.scheduler.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(n, tuple(getattr(p, "ds_shape", p.shape))) for n, p in self.hf_model.named_parameters()]

    def gather(self, names: list[str]) -> dict[str, torch.Tensor]:
        import deepspeed

        params = dict(self.hf_model.named_parameters())
        chosen = [params[n] for n in names]
        with deepspeed.zero.GatheredParameters(chosen, modifier_rank=None):
            return {n: p.data.detach().clone() for n, p in zip(names, chosen)}

    def save(self, path: str) -> None:
        self.engine.save_checkpoint(os.path.join(path, "learner"), tag="state", save_latest=False)

    def load(self, path: str) -> None:
        load_path, _ = self.engine.load_checkpoint(os.path.join(path, "learner"), tag="state",
                                                   load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {path}/learner")


def deepspeed_config(optim_cfg: OptimConfig, learner_cfg: LearnerConfig) -> dict:
    """or1's DeepSpeed config; ``learner.deepspeed_config`` is merged over it (nested dicts too)."""
    config = {
        # DeepSpeed insists on a batch size; or1 feeds packed micro-batches itself and marks the boundary.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": optim_cfg.grad_clip if optim_cfg.grad_clip > 0 else 0.0,
        "zero_optimization": {"stage": learner_cfg.zero_stage},
        "bf16": {"enabled": learner_cfg.compute_dtype == DType.bfloat16},
        "zero_allow_untested_optimizer": True,  # torch AdamW, exactly as the FSDP2 backend uses it
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return _merge(config, dict(learner_cfg.deepspeed_config))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_backend(name: LearnerBackend | str, *args, **kwargs):
    if name == LearnerBackend.fsdp:
        return FSDP2Backend(*args, **kwargs)
    if name == LearnerBackend.deepspeed:
        return DeepSpeedBackend(*args, **kwargs)
    raise ValueError(f"learner.backend must be one of {[b.value for b in LearnerBackend]}, got {name!r}")


_LAYER_PREFIX = re.compile(r"^(.*?\.layers\.\d+)\.")


def weight_buckets(shapes: list[tuple[str, tuple[int, ...]]], bytes_per_element: int,
                   bucket_bytes: int) -> list[list[str]]:
    """Split parameter names into buckets of about ``bucket_bytes``, keeping each decoder layer whole.

    vLLM fuses projections of one layer (q/k/v, gate/up) into one tensor and processes a layer
    once all its checkpoint tensors arrived, so a layer must never straddle two pushes. Units (a
    whole decoder layer, or one top-level tensor) are packed in model order; a unit larger than
    a bucket travels alone.
    """
    units: list[list] = []  # [unit key, names, bytes], in model order
    for name, shape in shapes:
        key, size = _unit_key(name), bytes_per_element * math.prod(shape)
        if units and units[-1][0] == key:
            units[-1][1].append(name)
            units[-1][2] += size
        else:
            units.append([key, [name], size])
    buckets: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for _, names, size in units:
        if current and current_bytes + size > bucket_bytes:
            buckets.append(current)
            current, current_bytes = [], 0
        current += names
        current_bytes += size
    if current:
        buckets.append(current)
    return buckets


def _unit_key(name: str) -> str:
    """``model.layers.3`` for any tensor of decoder layer 3; the tensor's own name otherwise."""
    m = _LAYER_PREFIX.match(name)
    return m.group(1) if m else name
