"""Typed configuration for or1, registered with Hydra's ConfigStore.

Every option is documented once, here, next to its field. Recipes in ``recipes/`` are YAML files
whose ``defaults`` list starts with ``or1_config`` (this schema), so a typo in a recipe or on the
command line is an error at start-up, not a silently ignored key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TinyBootstrapConfig:
    """Creates a tiny model and the synthetic arithmetic data when they are missing.

    Only the ``tiny_cpu`` recipe turns this on, so that ``python -m or1.train`` runs end to end on
    a fresh machine with no downloaded weights. Real recipes point ``model.path`` at a checkpoint.
    """

    enabled: bool = False
    hidden_size: int = 256  # multiple of 64 (head_dim is fixed at 64 for vLLM's CPU attention)
    num_layers: int = 2
    seed: int = 0
    warmup_steps: int = 900  # supervised steps on arithmetic: a weak start that RL can improve
    warmup_lr: float = 1e-3
    # fraction of warm-up targets replaced by near misses, so the start policy samples a spread of
    # answers around the right one (as SFT models do) and RL has something to sharpen
    label_noise: float = 0.3
    n_train: int = 2000  # arithmetic problems written to data/train.jsonl
    n_val: int = 200  # held-out problems written to data/val.jsonl (never in train)
    max_operand: int = 49  # operands are 0..max_operand


@dataclass
class ModelConfig:
    path: str = MISSING  # Hugging Face model directory or hub name (on clusters that reach the hub)
    dtype: str = "float32"  # dtype of the learner's master weights: float32 | bfloat16
    trust_remote_code: bool = False
    # parameters in billions, for trainer.dry_run's memory estimate when model.path's config.json
    # cannot be read on the planning machine (e.g. a hub name offline); None: count from the config
    num_params_b: Optional[float] = None


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)  # jsonl files of {prompt, answer, data_source, ...}
    val_files: list[str] = field(default_factory=list)  # held-out jsonl files scored by validation
    prompt_key: str = "prompt"  # row field holding the user message
    max_prompt_length: int = 1024  # prompts longer than this (in tokens) are dropped at load, with a count
    shuffle: bool = True  # reshuffle the training prompts every epoch (seeded by trainer.seed)
    apply_chat_template: bool = True  # wrap the prompt as one user message with the tokenizer's template


@dataclass
class RolloutConfig:
    n: int = 16  # responses sampled per prompt (the GRPO group size)
    temperature: float = 1.0  # OR1 samples at 1.0; lower temperatures collapse entropy
    top_p: float = 1.0
    max_response_length: int = 8192  # tokens; responses cut here are "truncated"
    max_model_len: int = 10240  # vLLM context: must hold prompt + response
    dtype: str = "bfloat16"  # vLLM weight dtype; float32 works on CPU and makes log-probs match exactly
    tensor_parallel_size: int = 1  # GPUs per vLLM engine (on one node)
    num_engines: int = 1  # vLLM engines; prompts are split evenly between them, a prompt's n responses stay in one
    gpu_memory_utilization: float = 0.85  # on CPU: the share of host memory vLLM may take
    cpu_kvcache_space_gib: Optional[int] = None  # sets VLLM_CPU_KVCACHE_SPACE in whole GiB (CPU only); None: vLLM default
    enforce_eager: bool = False  # True skips graph capture / compilation (faster start, used on CPU)
    enable_prefix_caching: bool = True  # the cache is reset after every weight push
    num_cpus: float = 1  # Ray CPUs reserved for each rollout actor
    # colocated placement on GPUs: vLLM sleeps while the learner works (1: weights to host memory and
    # KV cache freed; 2: both freed, as the next weight push overwrites them anyway) and wakes for the push
    sleep_level: int = 1
    vllm_log_level: str = "WARNING"  # VLLM_LOGGING_LEVEL inside the actor unless already set
    val_n: int = 1  # samples per validation prompt
    val_temperature: float = 0.0  # 0: greedy validation


@dataclass
class ActorConfig:
    lr: float = 1e-6  # AdamW learning rate, constant after the warm-up (OR1: constant)
    lr_warmup_steps: int = 0  # optimizer steps of linear warm-up from 0 to lr (checkpointed)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping
    clip_low: float = 0.2  # PPO ratio clip: ratio >= 1 - clip_low
    clip_high: float = 0.2  # PPO ratio clip: ratio <= 1 + clip_high (> clip_low: DAPO's clip-higher)
    dual_clip: Optional[float] = None  # c > 1: caps a negative-advantage token's loss at -c*A; None: off
    ppo_epochs: int = 1  # passes over each rollout batch (OR1: 1; Math-7B: 1 pass in 2 mini-batches)
    mini_batch_size: int = 0  # prompt groups per optimizer step; 0: the whole batch in one step
    micro_batch_size: int = 8  # sequences per forward/backward per learner rank; does not change the loss
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (long contexts)


@dataclass
class LearnerConfig:
    """How the policy is trained: the backend and the data-parallel group (what is optimised: ``actor``)."""

    backend: str = "fsdp"  # fsdp (PyTorch FSDP2) | deepspeed (ZeRO, stage ``zero_stage``); same interface
    # dtype of forward and backward: bfloat16 on GPUs (FSDP2 mixed precision / DeepSpeed bf16) keeps the
    # master weights, gradient reduction and optimizer in model.dtype; float32: everything in float32
    compute_dtype: str = "float32"
    num_workers: int = 1  # data-parallel learner ranks, one Ray actor each (one GPU each on GPU clusters)
    num_cpus: float = 1  # Ray CPUs reserved for each learner actor
    torch_threads: int = 0  # torch intra-op threads per learner on CPU; 0: leave torch's default
    zero_stage: int = 3  # deepspeed only: ZeRO stage (3 shards parameters, gradients and optimizer state)
    deepspeed_config: dict[str, Any] = field(default_factory=dict)  # deepspeed only: keys merged over or1's config
    # > 0: the learner never materialises a micro-batch's full-vocabulary logits; it computes log-probs and
    # entropy this many token positions at a time, recomputing each chunk in the backward pass (long
    # contexts: at 32K tokens x 152K vocabulary the float32 logits alone are ~19 GiB); 0: all at once
    logits_chunk_tokens: int = 0
    # weight sync: parameters are gathered from the shards and sent to vLLM in buckets of about this
    # size (whole decoder layers), so neither side ever holds a second full copy of the model
    sync_bucket_mb: float = 512


@dataclass
class EntropyConfig:
    """Adaptive entropy control: a bonus switched on only while entropy is below ``target``."""

    adaptive: bool = True  # OR1's controller; False: a fixed bonus coefficient ``fixed_coef``
    target: float = 0.2  # target entropy (nats per token)
    delta: float = 0.005  # change of the coefficient per step (paper 0.005; released scripts 1e-4)
    min_coef: float = 0.0
    max_coef: float = 0.005
    fixed_coef: float = 0.0  # used when adaptive is False; 0: no entropy bonus


@dataclass
class FilterConfig:
    """Online filtering of prompt groups and removal of mastered prompts."""

    zero_variance: bool = True  # drop groups whose rewards are all equal (all right / all wrong) from the update
    refill: bool = False  # generate for more prompts until batch_size informative groups are kept (DAPO)
    max_refill_rounds: int = 4  # extra generation rounds per step at most; then train on what was kept
    drop_mastered: bool = False  # prompts whose group accuracy reached mastered_threshold are not sampled in later epochs
    mastered_threshold: float = 1.0


@dataclass
class SampleBufferConfig:
    """Selective Sample Buffer (Skywork-R1V2): replay recent informative groups into starved batches."""

    enabled: bool = False
    capacity: int = 256  # prompt groups kept (most recent first out)
    min_informative_frac: float = 0.5  # mix buffered groups in when fewer of the batch's groups are informative
    mix_ratio: float = 0.25  # buffered groups added, as a fraction of trainer.batch_size


@dataclass
class StageConfig:
    steps: int = 0  # steps spent in this stage (the last stage runs until trainer.total_steps)
    max_response_length: int = 8192  # response limit (tokens) during the stage


@dataclass
class AlgorithmConfig:
    adv_eps: float = 1e-6  # A = (r - mean) / (std + adv_eps) within each prompt group
    norm_adv_by_std: bool = True  # False: Dr. GRPO-style A = r - mean
    adv_baseline: str = "mean"  # mean (GRPO/OR1) | leave_one_out (RLOO: mean of the other responses)
    truncation_mask: str = "off"  # responses cut at the length limit: off (OR1) | before | after (see docs/algorithm.md)
    loss_agg_mode: str = "token_mean"  # token_mean (OR1) | seq_mean_token_mean | seq_mean_token_sum
    use_kl_loss: bool = False  # OR1: no KL; when False no reference model is loaded at all
    kl_coef: float = 0.001
    kl_estimator: str = "k3"  # k1 | k2 | k3 (low variance)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    sample_buffer: SampleBufferConfig = field(default_factory=SampleBufferConfig)
    # multi-stage context growth inside one run (e.g. 8K -> 16K -> 32K); empty: rollout.max_response_length throughout
    stages: list[StageConfig] = field(default_factory=list)


@dataclass
class RewardTerm:
    """One weighted reward function. Its value is weight * fn(response, sample, **kwargs)."""

    # "package.module:function" or "/path/to/file.py:function"; returns a float or a dict with "score"
    # (its other keys are logged as reward/<name>/<key>; an "acc" key decides correctness);
    # or "rm:<name>" for the reward model configured under reward.reward_models.<name>
    fn: str = MISSING
    weight: float = 1.0
    name: str = ""  # metric name (reward/<name>); default: the function's name
    kwargs: dict[str, Any] = field(default_factory=dict)  # bound to fn, e.g. {fallbacks: [boxed, last_number]}


@dataclass
class RewardModelConfig:
    """A sequence-classification reward model served by its own Ray actor (term ``fn: rm:<name>``)."""

    path: str = MISSING  # Hugging Face directory or hub name of an AutoModelForSequenceClassification (1 label)
    dtype: str = "bfloat16"
    batch_size: int = 16  # (prompt, response) pairs per forward pass
    max_length: int = 4096  # tokens; longer conversations are truncated
    prompt_key: str = "prompt"  # row field holding the user message the response answers
    num_cpus: float = 1
    num_gpus: float = 0


@dataclass
class SandboxConfig:
    """The code-execution service the code verifier (or1.rewards.code:score) calls."""

    start_local: bool = False  # start `python -m sandbox` on this machine for the run (stopped at exit)
    url: Optional[str] = None  # or use a running service, e.g. http://sandbox-host:8765
    max_concurrency: int = 0  # programs the local service runs at once; 0: one per CPU core


@dataclass
class RewardConfig:
    # The default reward, for rows whose data_source has no route: this function alone ...
    fn: str = "or1.rewards.math:score"
    # ... or, when non-empty, this weighted sum (e.g. correctness + 0.1 * format); fn is then unused
    terms: list[RewardTerm] = field(default_factory=list)
    # data_source -> its own weighted terms, e.g. {code: [{fn: or1.rewards.code:score}]}
    routes: dict[str, list[RewardTerm]] = field(default_factory=dict)
    fallback_score: float = 0.0  # a term that raises, times out or crashes scores this (counted, logged)
    timeout_s: float = 10.0  # hard wall-clock limit per term and response; the worker is killed after it
    num_workers: int = 2  # reward worker processes
    memory_mb: int = 4096  # address-space cap of each worker process
    reward_models: dict[str, RewardModelConfig] = field(default_factory=dict)  # name -> model, for "rm:<name>" terms
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)


@dataclass
class TrainerConfig:
    total_steps: int = 100  # policy updates (one rollout batch each)
    batch_size: int = 256  # prompts per rollout batch (each gets rollout.n responses)
    output_dir: str = "outputs/run"  # metrics.jsonl, checkpoints and the resolved config go here
    seed: int = 0  # seeds data order, torch and vLLM sampling
    val_every: int = 0  # validate every k steps (0: only before and after training)
    val_before_train: bool = True
    loggers: list[str] = field(default_factory=lambda: ["console", "jsonl", "wandb"])  # of console|jsonl|wandb
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "or1"
    experiment_name: str = "run"
    ray_address: Optional[str] = None  # join an existing Ray cluster ("auto" or host:port); None: start one
    ray_num_cpus: Optional[int] = None  # CPUs of a locally started Ray; None: all of the machine's
    # GPU placement: colocated (learner rank i and a vLLM shard share GPU i; vLLM sleeps while the learner
    # trains) | split (learners on the first learner.num_workers GPUs, vLLM engines on the rest)
    placement: str = "colocated"
    nnodes: int = 1  # nodes of the Ray cluster the run uses (multi-node: trainer.ray_address=auto)
    gpus_per_node: int = 0  # GPUs used per node; 0: a CPU-only run (learners and vLLM on CPU cores)
    gpu_memory_gib: float = 80.0  # memory of one GPU, for the dry-run memory estimate
    dry_run: bool = False  # print the placement plan (actors, GPUs, memory per GPU) and exit
    save_final: bool = True  # write the final policy in Hugging Face format to output_dir/final
    save_every: int = 0  # full checkpoint every k steps (0: only at the end); see or1/checkpoint.py
    keep_last: int = 3  # complete checkpoints kept (older ones deleted); 0 keeps all
    # auto: continue from the latest complete checkpoint in output_dir if there is one; off: start fresh;
    # a path: that checkpoint (or that run directory's latest)
    resume: str = "auto"
    # a checkpoint or run directory to start from when resume finds nothing (a stage starting from the
    # previous stage's run); once this run has checkpoints of its own, resume=auto continues those
    init_from: Optional[str] = None


@dataclass
class OR1Config:
    recipe: str = "custom"  # the recipe's name, recorded in metrics and checkpoints
    tiny: TinyBootstrapConfig = field(default_factory=TinyBootstrapConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="or1_config", node=OR1Config)
