"""Building the policy on a learner rank without any process ever holding the whole model.

The float32 master weights of a 32B model are 131 GB: loading them whole and then sharding
(what ``from_pretrained(...).to(device)`` followed by ``fully_shard`` does) cannot start on
80 GB GPUs. Instead:

- FSDP2 (``build_fsdp_model``): the model is built with its parameters on the meta device (no
  memory, no initialisation compute; buffers such as rotary frequencies are computed as the model's
  own code computes them), sharded, given memory for this rank's shards only (``to_empty``), and
  each shard is read from the checkpoint's safetensors files: the rows of that rank alone.
- DeepSpeed ZeRO-3 (``build_zero3_model``): the model is built under ``deepspeed.zero.Init`` (each
  parameter partitioned as soon as it is created, its initialisation and ZeRO's broadcast of the
  random values skipped) and each rank reads its own flat range of every parameter from the
  safetensors files.

Peak host memory per rank: its shards plus one tensor slice (``benchmarks/learner_init_memory.py``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from or1.config import LearnerConfig, ModelConfig
from or1.workers.hf_io import SafetensorsCheckpoint, local_model_dir


@contextmanager
def parameters_on_meta():
    """Create every parameter on the meta device; buffers stay real.

    Constructors allocate a parameter (``torch.empty``: address space, no pages touched) and then
    register it; registration moves it to meta at once, so the initialisation that follows runs on
    meta tensors and costs nothing. Buffers (rotary ``inv_freq``...) are computed for real, exactly
    as the model's own code computes them.
    """
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param) -> None:
        if param is not None and param.device.type != "meta":
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


@contextmanager
def zero3_init_without_broadcast():
    """Inside ``deepspeed.zero.Init``, partition each new parameter without first broadcasting it.

    ZeRO-3's init broadcasts every freshly created (random) parameter from rank 0 so that all ranks
    partition the same values. or1 overwrites every partition from the checkpoint right after, so
    the broadcast would only cost time: the whole model sent from rank 0 to every rank at start (a
    32B model's 131 GB over the network; not measured separately here, where the 0.5 GiB per rank
    came from transformers' initialisation, see ``partitioned_init_only``). DeepSpeed 0.19's
    ``Init._zero_init_param`` is that broadcast plus ``partition()``; with another DeepSpeed that
    lacks it, this does nothing and the broadcast happens.
    """
    from deepspeed.runtime.zero.partition_parameters import Init

    original = getattr(Init, "_zero_init_param", None)
    if original is None or not hasattr(Init, "_convert_to_deepspeed_param"):
        yield
        return

    def partition_only(self, param):
        self._convert_to_deepspeed_param(param)
        param.partition()

    Init._zero_init_param = partition_only
    try:
        yield
    finally:
        Init._zero_init_param = original


@contextmanager
def partitioned_init_only():
    """ZeRO-3's partitioned init (the live ``HfDeepSpeedConfig``'s settings) without the random
    initialisation transformers 5 runs after it.

    Under ZeRO-3, ``from_config`` builds the model inside ``deepspeed.zero.Init`` and then calls
    ``initialize_weights_zero3``: every module's parameters gathered in full, initialised on rank 0
    and broadcast — the whole model through every rank and the network, for values or1 overwrites
    from the checkpoint next (+0.5 GiB per rank at 1B, measured: the gathered embedding and head).
    Entering ``zero.Init`` here and marking it entered (``set_zero3_state``) makes ``from_config``
    build the model partitioned and stop there. Without that marker (another transformers), plain
    ``from_config`` runs, which is correct but slower.
    """
    import deepspeed
    from transformers import modeling_utils
    from transformers.integrations.deepspeed import deepspeed_config

    mark_entered = getattr(modeling_utils, "set_zero3_state", None)
    if mark_entered is None:
        yield
        return
    with deepspeed.zero.Init(config_dict_or_path=deepspeed_config()), zero3_init_without_broadcast(), mark_entered():
        yield


def model_config(model_cfg: ModelConfig):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(local_model_dir(model_cfg.path, model_cfg.trust_remote_code),
                                      trust_remote_code=model_cfg.trust_remote_code)


def adapt_for_training(model, learner_cfg: LearnerConfig, trainable: bool):
    """What the learner needs of a freshly built model, before it is sharded; parameter names stay, so
    sharding and checkpoints see the same model:

    - ``lm_head`` becomes ``or1.algo.losses.TokenStatsHead``: log-prob and entropy at the positions
      that predict response tokens only, in chunks with ``learner.logits_chunk_tokens``;
    - packed attention (``or1.workers.varlen_attention``) with ``learner.padding_free``;
    - gradient checkpointing with ``learner.gradient_checkpointing``.
    """
    from or1.algo.losses import TokenStatsHead
    from or1.workers.varlen_attention import use_varlen_attention

    if trainable and learner_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if learner_cfg.padding_free:
        use_varlen_attention(model)
    model.lm_head = TokenStatsHead(model.lm_head, learner_cfg.logits_chunk_tokens)
    return model


def build_fsdp_model(model_cfg: ModelConfig, learner_cfg: LearnerConfig, device: torch.device, shard, trainable: bool):
    """The policy (or frozen reference), sharded by ``shard(model)`` (FSDP2's ``fully_shard`` per decoder
    layer and root), holding only this rank's shards, loaded from ``model.path``'s safetensors."""
    from transformers import AutoModelForCausalLM

    from or1.workers.backends import torch_dtype

    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(model_config(model_cfg), dtype=torch_dtype(model_cfg.dtype),
                                                 trust_remote_code=model_cfg.trust_remote_code)
    adapt_for_training(model, learner_cfg, trainable)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    shard(model)
    model.to_empty(device=device)  # memory for this rank's shards (and the buffers) only
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    load_fsdp_shards(model, SafetensorsCheckpoint(local_model_dir(model_cfg.path, model_cfg.trust_remote_code)))
    return model


def _load_weights(model: torch.nn.Module, checkpoint: SafetensorsCheckpoint, read_parameter) -> None:
    """``read_parameter(name, param)`` fills this rank's part of each parameter from ``checkpoint``;
    persistent buffers saved with the model are copied whole. Names the checkpoint lacks are an error."""
    missing = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in checkpoint:
                missing.append(name)
                continue
            read_parameter(name, param)
        for name, buffer in model.named_buffers():
            if name in checkpoint:  # persistent buffers saved with the model
                buffer.copy_(checkpoint.read(name).to(device=buffer.device, dtype=buffer.dtype))
    checkpoint.close()
    if missing:
        raise KeyError(f"{checkpoint.dir} has no weights for {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                       "(is model.path a checkpoint of this architecture?)")


def load_fsdp_shards(model: torch.nn.Module, checkpoint: SafetensorsCheckpoint) -> None:
    """Copy each parameter's local shard (a ``DTensor``'s box of the global tensor) from the checkpoint."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    def read_shard(name: str, param) -> None:
        if isinstance(param, DTensor):
            local = param.to_local()
            shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
            box = tuple(slice(o, o + s) for o, s in zip(offset, shape))
        else:
            local, box = param.data, None
        if local.numel():
            checkpoint.read_into(name, local, box)  # on CPU straight from the file into the shard

    _load_weights(model, checkpoint, read_shard)


def build_zero3_model(model_cfg: ModelConfig, learner_cfg: LearnerConfig, trainable: bool):
    """The policy under DeepSpeed ZeRO-3 (an ``HfDeepSpeedConfig`` must be alive): every parameter is
    partitioned as it is created, then each rank reads its own flat range from the safetensors."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from or1.workers.backends import torch_dtype

    with no_init_weights(), partitioned_init_only():
        model = AutoModelForCausalLM.from_config(model_config(model_cfg), dtype=torch_dtype(model_cfg.dtype),
                                                 trust_remote_code=model_cfg.trust_remote_code)
    model.tie_weights()  # from_config ties after its own ZeRO-3 initialisation, which was skipped
    adapt_for_training(model, learner_cfg, trainable)
    load_zero3_partitions(model, SafetensorsCheckpoint(local_model_dir(model_cfg.path, model_cfg.trust_remote_code)))
    return model


def load_zero3_partitions(model: torch.nn.Module, checkpoint: SafetensorsCheckpoint) -> None:
    """ZeRO-3 keeps rank r's partition of a parameter as ``ds_tensor``: elements
    ``[r * p, (r + 1) * p)`` of the flattened tensor, p = ``ds_tensor.ds_numel``, zero padded at the end."""
    import deepspeed.comm as ds_dist

    def read_partition(name: str, param) -> None:
        part = param.ds_tensor
        size = part.ds_numel
        start = size * ds_dist.get_rank(group=param.ds_process_group)
        end = min(start + size, param.ds_numel)
        part.zero_()
        if start < end:
            checkpoint.read_flat(name, start, end, into=part[:end - start])

    _load_weights(model, checkpoint, read_partition)
