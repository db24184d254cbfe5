"""Typed configuration for or1, registered with Hydra's ConfigStore.

Every option is documented once, here, next to its field. Recipes in ``recipes/`` are YAML files
whose ``defaults`` list starts with ``or1_config`` (this schema), so a typo in a recipe or on the
command line is an error at start-up, not a silently ignored key. Choices are Enums: Hydra refuses
``algorithm.truncation_mask=sometimes`` at composition, naming the valid values.

Sections, by what they hold: ``model``, ``data``, ``rollout`` (vLLM sampling and engines),
``optim`` (the optimizer), ``algorithm`` (what is optimised: advantages, clipping, PPO epochs and
mini-batches, loss aggregation, KL, entropy, filtering, stages), ``learner`` (how it is computed:
backend, ranks, micro-batches, precision), ``reward``, ``trainer`` (the loop, logging,
checkpoints, the cluster). Batch sizes name their unit: prompts, groups, sequences or tokens.

Cross-field consistency is checked by ``validate_config`` before anything starts.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

log = logging.getLogger("or1")


class Choice(str, Enum):
    """A configuration choice: its name is its value, it compares equal to that string."""

    def __str__(self) -> str:
        return self.value


class DType(Choice):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class AdvBaseline(Choice):
    mean = "mean"  # GRPO / OR1: the group's mean reward
    leave_one_out = "leave_one_out"  # RLOO: the mean of the other responses of the group


class TruncationMask(Choice):
    none = "none"  # truncated responses are ordinary samples (OR1's adopted No-Adv-Mask)
    before = "before"  # left out of the group statistics, advantage 0
    after = "after"  # statistics over all responses, then advantage 0


class LossAgg(Choice):
    token_mean = "token_mean"  # OR1: every response token of the optimizer batch weighs the same
    seq_mean_token_mean = "seq_mean_token_mean"  # original GRPO: mean over sequences of per-sequence means
    seq_mean_token_sum = "seq_mean_token_sum"  # Dr. GRPO-like: token sums / number of sequences


class KLEstimator(Choice):
    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


class EntropyMode(Choice):
    adaptive = "adaptive"  # OR1's controller: a bonus only while entropy is below the target
    fixed = "fixed"  # a constant bonus coefficient (fixed_coef; 0 turns the bonus off)


class LearnerBackend(Choice):
    fsdp = "fsdp"  # PyTorch FSDP2
    deepspeed = "deepspeed"  # DeepSpeed ZeRO


class RefillMode(Choice):
    rounds = "rounds"  # generate a round, score it, select; another round for the deficit
    streaming = "streaming"  # new prompts join while the first ones generate (or1.algo.filters.PrefixRefill)


class Placement(Choice):
    colocated = "colocated"
    split = "split"


class LoggerKind(Choice):
    console = "console"
    jsonl = "jsonl"  # metrics.jsonl is written whatever the list says
    wandb = "wandb"
    tensorboard = "tensorboard"  # <trainer.output_dir>/tensorboard


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class TinyTask(str, Enum):
    arithmetic = "arithmetic"  # the answer is the number, scored by the math verifier
    code = "code"  # the response is a program that must print the number, judged by the sandbox


@dataclass
class TinyBootstrapConfig:
    """Creates a tiny model and the synthetic arithmetic data when they are missing.

    Only the ``tiny_cpu`` recipe turns this on, so that ``python -m or1.train`` runs end to end on
    a fresh machine with no downloaded weights. Files are only ever created inside
    ``trainer.output_dir``: a ``model.path`` or data file elsewhere must exist like in any recipe.
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
    # code: the same problems as code tests ({inputs: [""], outputs: [result]}, data_source
    # synthetic/arithmetic_code), for the tiny_code_cpu recipe's run of the code-RL plumbing
    task: TinyTask = TinyTask.arithmetic


@dataclass
class ModelConfig:
    path: str = MISSING  # Hugging Face model directory, or a hub name (org/name) on clusters that reach the hub
    dtype: DType = DType.float32  # dtype of the learner's master weights (float32; bfloat16 loses small updates)
    trust_remote_code: bool = False
    # parameters in billions, for trainer.dry_run's memory estimate when model.path's config.json
    # cannot be read on the planning machine (e.g. a hub name offline); None: count from the config
    num_params_b: Optional[float] = None


class DataLayout(Choice):
    """Where a layout keeps each field (``data.fields`` overrides any of them; see docs/data.md)."""

    or1 = "or1"  # top-level prompt, answer, tests, data_source, ability
    # verl / Skywork-OR1-RL-Data: prompt (chat messages), reward_model.ground_truth (a JSON list of
    # acceptable answers, or a JSON object of tests), data_source, ability (math | code)
    verl = "verl"


class BadRows(Choice):
    skip = "skip"  # leave bad rows out; a warning names every one (file and row) and the count
    error = "error"  # stop at start-up, naming every bad row


@dataclass
class DataFieldsConfig:
    """Where rows keep what or1 reads: dotted paths into nested fields (``reward_model.ground_truth``,
    ``prompt.0.content``); null takes ``data.layout``'s path; "" means the rows have no such field.
    When answer and tests name the same path (verl), a JSON object there is the tests, anything else
    the answer."""

    prompt: Optional[str] = None  # text, or a list of chat messages ({role, content})
    answer: Optional[str] = None  # a string, or a list of acceptable answers (any one is correct)
    tests: Optional[str] = None  # {inputs, outputs, fn_name?} or that as a JSON string (the code verifier's)
    data_source: Optional[str] = None  # routes the reward (reward.routes) and names the source in metrics
    ability: Optional[str] = None  # a second routing key (verl's math | code) for rows whose data_source has no route


@dataclass
class DataConfig:
    """Prompt data: JSONL (.jsonl), Parquet (.parquet) files and saved Hugging Face dataset
    directories (``Dataset.save_to_disk``), mixed freely; globs (``data/*.parquet``) allowed."""

    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)  # held-out prompts scored by validation
    layout: DataLayout = DataLayout.or1
    fields: DataFieldsConfig = field(default_factory=DataFieldsConfig)
    # appended verbatim to the prompt's last user message, e.g. " Put your final answer within \\boxed{}."
    instruction_suffix: str = ""
    max_prompt_length: int = 1024  # tokens, chat template and suffix included; longer prompts are dropped, counted
    dedup: bool = True  # identical prompts (within the train files, within the val files) are kept once, counted
    bad_rows: BadRows = BadRows.skip  # invalid JSON, missing or empty prompt / answer, unparsable tests
    shuffle: bool = True  # reshuffle the training prompts every epoch (seeded by trainer.seed, resumable)
    apply_chat_template: bool = True  # render prompts with the tokenizer's chat template (a string is one user message)


@dataclass
class RolloutConfig:
    n: int = 16  # responses sampled per prompt: the GRPO group size
    temperature: float = 1.0  # OR1 samples at 1.0; lower temperatures collapse entropy
    top_p: float = 1.0
    max_response_length: int = 8192  # tokens; responses cut here are "truncated"
    max_model_len: int = 10240  # tokens of vLLM context: must hold prompt + response
    dtype: DType = DType.bfloat16  # vLLM weight dtype; float32 works on CPU and makes log-probs match exactly
    tensor_parallel_size: int = 1  # GPUs per vLLM engine (on one node)
    num_engines: int = 1  # vLLM engines; prompts are split evenly between them, a prompt's n responses stay in one
    gpu_memory_utilization: float = 0.85  # on CPU: the share of host memory vLLM may take
    cpu_kvcache_space_gib: Optional[int] = None  # VLLM_CPU_KVCACHE_SPACE in whole GiB (CPU only); None: vLLM default
    enforce_eager: bool = False  # True skips graph capture / compilation (faster start, used on CPU)
    enable_prefix_caching: bool = True  # the cache is reset after every weight push
    num_cpus: float = 1  # Ray CPUs reserved for each rollout actor
    # colocated placement on GPUs: vLLM sleeps while the learner works and wakes for the push.
    # 2: weights and KV cache freed (every push rewrites all weights, so keeping them is waste; vLLM keeps
    # its buffers on the host); 1: weights copied to host memory, KV cache freed
    sleep_level: int = 2
    # VLLM_LOGGING_LEVEL of the engines (unless set in the environment); null: ERROR, WARNING with trainer.verbose
    vllm_log_level: Optional[str] = None
    val_n: int = 1  # samples per validation prompt: the k of val/<data_source>/avg@k and pass@k
    val_temperature: float = 0.0  # 0: greedy validation (then val_n > 1 repeats the same answer)
    # validation's response limit (tokens), the same at every validation; null: the longest stage's limit
    val_max_response_length: Optional[int] = None


@dataclass
class OptimConfig:
    """The optimizer: AdamW with a linear warm-up, then a constant rate (OR1: constant 1e-6)."""

    lr: float = 1e-6
    lr_warmup_steps: int = 0  # optimizer steps of linear warm-up from 0 to lr (checkpointed)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping


@dataclass
class KLConfig:
    """A KL penalty against the frozen start policy. OR1 uses none: no reference model is loaded at all."""

    enabled: bool = False
    coef: float = 0.001
    estimator: KLEstimator = KLEstimator.k3  # k3: unbiased and low-variance


@dataclass
class EntropyConfig:
    """The entropy bonus: OR1's adaptive controller, or a fixed coefficient."""

    mode: EntropyMode = EntropyMode.adaptive
    target: float = 0.2  # adaptive: target entropy (nats per token)
    delta: float = 0.005  # adaptive: change of the coefficient per step (paper 0.005; released scripts 1e-4)
    min_coef: float = 0.0  # adaptive: the coefficient stays in [min_coef, max_coef]
    max_coef: float = 0.005
    fixed_coef: float = 0.0  # fixed: the bonus coefficient every step; 0: no entropy bonus


@dataclass
class FilterConfig:
    """Online filtering of prompt groups and removal of mastered prompts."""

    # drop groups whose advantages are all zero (all-equal rewards, or every signal masked by
    # algorithm.truncation_mask) from the update: they carry no gradient and only dilute the token mean
    drop_zero_advantage: bool = True
    refill: bool = False  # generate for more prompts until trainer.prompts_per_step groups are kept (DAPO)
    max_refill_rounds: int = 4  # extra generation rounds per step at most; then train on what was kept
    # a refill round asks for deficit / p prompts, p the running fraction of groups with a non-zero advantage
    # (or1.algo.filters.refill_prompts), at most this many times the deficit, so one round usually fills the
    # batch; surplus groups are not trained on. 1: ask for the deficit only
    max_oversample: float = 4.0
    # rounds: each refill is a full generation round after the previous one was scored. streaming: groups are
    # judged as they finish (in the order their prompts were drawn, so runs stay reproducible) and each
    # shortfall draws new prompts into the running engines at once; at most (1 + max_refill_rounds) x
    # prompts_per_step prompts per step, and prompts still generating once the batch is full are aborted
    refill_mode: RefillMode = RefillMode.rounds
    drop_mastered: bool = False  # prompts whose group accuracy reached mastered_threshold leave later epochs
    mastered_threshold: float = 1.0


@dataclass
class SampleBufferConfig:
    """Selective Sample Buffer (Skywork-R1V2): replay recent informative groups into starved batches."""

    enabled: bool = False
    capacity_groups: int = 256  # groups kept (the oldest leaves first)
    min_informative_frac: float = 0.5  # replay when fewer of the generated groups than this carry a non-zero advantage
    mix_ratio: float = 0.25  # groups replayed, as a fraction of trainer.prompts_per_step


@dataclass
class StageConfig:
    steps: int = 0  # steps spent in this stage (the last stage runs until trainer.total_steps)
    max_response_length: int = 8192  # response limit (tokens) during the stage


@dataclass
class AlgorithmConfig:
    """What is optimised (see docs/algorithm.md for every formula)."""

    adv_baseline: AdvBaseline = AdvBaseline.mean
    norm_adv_by_std: bool = True  # A = (r - b) / (std + adv_eps); False: Dr. GRPO's A = r - b
    adv_eps: float = 1e-6
    truncation_mask: TruncationMask = TruncationMask.none  # responses cut at the length limit
    loss_agg_mode: LossAgg = LossAgg.token_mean
    clip_low: float = 0.2  # PPO ratio clip: ratio >= 1 - clip_low
    clip_high: float = 0.2  # PPO ratio clip: ratio <= 1 + clip_high (> clip_low: DAPO's clip-higher)
    dual_clip: Optional[float] = None  # c > 1: caps a negative-advantage token's loss at -c*A; None: off
    ppo_epochs: int = 1  # passes over each rollout batch (OR1: 1)
    # groups per optimizer step; the kept groups are split into ceil(groups / mini_batch_groups)
    # near-equal mini-batches (never a tiny tail step); 0: the whole batch in one step (OR1 7B/32B;
    # Math-7B: 128 of 256)
    mini_batch_groups: int = 0
    # truncated importance sampling against the engine-vs-learner gap (on-policy): each token's loss is
    # weighted by min(exp(logp_learner_old - logp_vllm), tis_cap), the learner's recomputation of the
    # tokens over vLLM's (which sampled them); None: off. Not with trainer.off_policy_steps=1, whose ratio
    # already divides by vLLM's log-probs
    tis_cap: Optional[float] = None
    kl: KLConfig = field(default_factory=KLConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    sample_buffer: SampleBufferConfig = field(default_factory=SampleBufferConfig)
    # multi-stage context growth inside one run (e.g. 8K -> 16K -> 32K); empty: rollout.max_response_length throughout
    stages: list[StageConfig] = field(default_factory=list)


@dataclass
class LearnerConfig:
    """How the policy is trained: backend, data-parallel ranks, micro-batches, precision."""

    backend: LearnerBackend = LearnerBackend.fsdp  # same interface and arithmetic for both
    # dtype of forward and backward: bfloat16 on GPUs (FSDP2 mixed precision / DeepSpeed bf16) keeps the
    # master weights, gradient reduction and optimizer in model.dtype; float32: everything in float32.
    # float16 is refused: it needs loss scaling, which or1 does not implement
    compute_dtype: DType = DType.float32
    num_workers: int = 1  # data-parallel learner ranks, one Ray actor each (one GPU each on GPU clusters)
    num_cpus: float = 1  # Ray CPUs reserved for each learner actor
    torch_threads: int = 0  # torch intra-op threads per learner on CPU; 0: leave torch's default
    # Micro-batches (one forward/backward each; they never change the loss) are filled with sequences up to
    # this many tokens per learner rank (first-fit decreasing; a longer sequence runs alone). With padding
    # (padding_free=false) a micro-batch counts rows x its longest row. 0: no budget, micro_batch_sequences
    # consecutive sequences per micro-batch (the layout before token budgets)
    max_tokens_per_micro_batch: int = 16384
    micro_batch_sequences: int = 0  # > 0: also at most this many sequences per micro-batch
    # true: a micro-batch's sequences are concatenated into one row, position ids restarting for each, and
    # attention never crosses a sequence boundary (or1's varlen attention: torch's variable-length flash
    # kernel on GPUs in bf16, one causal SDPA per sequence elsewhere); no padding token is ever computed.
    # false: one right-padded row per sequence with an attention mask (a model whose attention layers do not
    # go through transformers' attention interface needs this: the learner checks at start-up and says so)
    padding_free: bool = True
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (long contexts)
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
class RewardRoute:
    """The reward of rows with one data_source: one function (``fn``) or a weighted sum (``terms``)."""

    fn: str = ""  # a single term of weight 1 ...
    terms: list[RewardTerm] = field(default_factory=list)  # ... or, when non-empty, these instead


@dataclass
class RewardModelConfig:
    """A sequence-classification reward model served by its own Ray actor (term ``fn: rm:<name>``)."""

    path: str = MISSING  # Hugging Face directory or hub name of an AutoModelForSequenceClassification (1 label)
    dtype: DType = DType.bfloat16
    batch_sequences: int = 16  # (prompt, response) pairs per forward pass
    max_length: int = 4096  # tokens; longer conversations are truncated
    # row field the model is shown as the user message (or1's prompt: text, or its last user message)
    prompt_key: str = "prompt"
    num_cpus: float = 1
    num_gpus: float = 0


@dataclass
class SandboxConfig:
    """The code-execution service the code verifier (or1.rewards.code:score) calls."""

    start_local: bool = False  # start `python -m sandbox` on this machine for the run (stopped at exit)
    url: Optional[str] = None  # or use a running service, e.g. http://sandbox-host:8765 (checked at start-up)
    max_concurrency: int = 0  # programs the local service runs at once; 0: one per CPU core


@dataclass
class RewardConfig:
    # The default reward, for rows whose data_source has no route: this function alone ...
    fn: str = "or1.rewards.math:score"
    # ... or, when non-empty, this weighted sum (e.g. correctness + 0.1 * format); fn is then unused
    terms: list[RewardTerm] = field(default_factory=list)
    # data_source -> its own reward, e.g. {code: {fn: or1.rewards.code:score}}; a row whose data_source
    # has no route is routed by its ability (verl's math | code) when it has one
    routes: dict[str, RewardRoute] = field(default_factory=dict)
    fallback_score: float = 0.0  # a term that raises, times out or crashes scores this (counted, logged)
    # hard wall-clock limit per term and response (the worker is killed after it), for functions that
    # declare no deadline of their own; the code verifier derives its deadline from the test count
    # and per-test limit, so a slow correct program is never cut short
    timeout_s: float = 10.0
    num_workers: int = 2  # reward worker processes
    memory_mb: int = 4096  # address-space cap of each worker process
    # stop the run when every reward of this many consecutive steps failed or timed out (a broken
    # reward function, an unreachable sandbox): training on fallback scores learns nothing
    max_failed_steps: int = 3
    reward_models: dict[str, RewardModelConfig] = field(default_factory=dict)  # name -> model, for "rm:<name>" terms
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)


@dataclass
class TrainerConfig:
    total_steps: int = 100  # policy updates (one rollout batch each)
    # prompts sampled per step, each getting rollout.n responses (one group each); with
    # algorithm.filter.refill, the number of groups with a non-zero advantage to collect
    prompts_per_step: int = 256
    output_dir: str = "outputs/run"  # metrics.jsonl, checkpoints and the resolved config go here
    seed: int = 0  # seeds data order, torch and vLLM sampling
    val_every: int = 0  # validate every k steps (0: only before and after training)
    val_before_train: bool = True
    loggers: list[LoggerKind] = field(
        default_factory=lambda: [LoggerKind.console, LoggerKind.jsonl, LoggerKind.wandb])
    # sampled (prompt, response, reward, correct, ...) rows written per step to samples.jsonl (and a wandb table)
    log_samples: int = 0
    # live progress (phase, counts, ETAs): redrawn every second on a terminal; into a file or pipe, a plain
    # line once a phase has run this many seconds and every this many seconds while it goes on
    progress_interval_s: float = 30.0
    # third-party notices (vLLM, torch, DeepSpeed, Ray, Python warnings) at their own levels; false: the ones
    # every actor repeats (platform, kernel and deprecation notices) are off, errors always shown
    verbose: bool = False
    wandb_mode: WandbMode = WandbMode.offline
    project: str = "or1"
    experiment_name: str = "run"
    # join an existing Ray cluster ("auto" or host:port, checked to answer before Ray is asked);
    # None: start a new local Ray for this run (never joins a cluster by accident)
    ray_address: Optional[str] = None
    ray_num_cpus: Optional[int] = None  # CPUs of a locally started Ray; None: all of the machine's
    # GPU placement: colocated (learner rank i and a vLLM shard share GPU i; vLLM sleeps while the learner
    # trains) | split (learners on the first learner.num_workers GPUs, vLLM engines on the rest)
    placement: Placement = Placement.colocated
    nnodes: int = 1  # nodes of the Ray cluster the run uses (multi-node: trainer.ray_address=auto)
    gpus_per_node: int = 0  # GPUs used per node; 0: a CPU-only run (learners and vLLM on CPU cores)
    gpu_memory_gib: float = 80.0  # memory of one GPU, for the dry-run memory estimate
    dry_run: bool = False  # print the placement plan (actors, GPUs, memory per GPU) and exit
    save_final: bool = True  # write the final policy in Hugging Face format to output_dir/final
    save_every: int = 0  # full checkpoint every k steps (0: only at the end); see or1/checkpoint.py
    keep_last: int = 3  # complete checkpoints kept (older ones deleted); 0 keeps all
    # 0: on-policy, each step generates with the policy it then updates (OR1). 1: one-step off-policy, the
    # next step's prompts are generated and scored while this step's update runs, by the policy one update
    # behind; the PPO ratio's denominator is then vLLM's log-probs of the tokens (the behaviour policy).
    # Needs separate resources for the two: placement=split on GPUs (the CPU plan gives each its own cores)
    off_policy_steps: int = 0
    # auto: continue from the latest complete checkpoint in output_dir if there is one; off: start fresh;
    # a path: that checkpoint (or that run directory's latest)
    resume: str = "auto"
    # a checkpoint or run directory to start from when resume finds nothing (a stage starting from the
    # previous stage's run); once this run has checkpoints of its own, resume=auto continues those
    init_from: Optional[str] = None


@dataclass
class OfflineFilterConfig:
    """``python -m or1.data.filter``: the offline difficulty filter, run once before training (OR1
    removes the prompts its starting model never or always solves). Training ignores this section;
    ``algorithm.filter`` is the online filter. Sampling uses rollout.* (OR1: temperature 1)."""

    k: int = 16  # responses sampled per prompt (OR1: 16 for math, 8 for code)
    low: float = 0.0  # a prompt is kept when low < accuracy < high (accuracy: correct / k)
    high: float = 1.0
    output_dir: str = ""  # accuracy.jsonl, kept/ (the kept rows in the input's format) and summary.json
    max_response_length: Optional[int] = None  # tokens per response; null: rollout.max_response_length (OR1: 32K)
    chunk_prompts: int = 256  # prompts per generation round; every scored round is saved (resume point)


@dataclass
class EvalConfig:
    """``python -m or1.eval``: avg@k and pass@k of a model on ``data.val_files``, per data source.
    Training ignores this section (its validation uses rollout.val_*)."""

    k: int = 8  # samples per problem (OR1 reports avg@32 on AIME24/25, avg@4 on LiveCodeBench)
    temperature: float = 1.0  # OR1 evaluates at temperature 1
    top_p: float = 1.0
    # tokens per response; null: rollout.val_max_response_length, else the longest stage's limit
    max_response_length: Optional[int] = None
    output: str = "eval.json"  # the summary (JSON); per-problem results go beside it: <name>.problems.jsonl


@dataclass
class OR1Config:
    recipe: str = "custom"  # the recipe's name, recorded in metrics and checkpoints
    tiny: TinyBootstrapConfig = field(default_factory=TinyBootstrapConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    filter: OfflineFilterConfig = field(default_factory=OfflineFilterConfig)  # or1.data.filter only
    eval: EvalConfig = field(default_factory=EvalConfig)  # or1.eval only


def register_configs() -> None:
    ConfigStore.instance().store(name="or1_config", node=OR1Config)


# Keys renamed when the configuration was regrouped (2026-11-24): old name -> new name. An old
# key on the command line or in a recipe is refused with its new name.
RENAMED = {
    "actor.lr": "optim.lr", "actor.lr_warmup_steps": "optim.lr_warmup_steps", "actor.betas": "optim.betas",
    "actor.weight_decay": "optim.weight_decay", "actor.grad_clip": "optim.grad_clip",
    "actor.clip_low": "algorithm.clip_low", "actor.clip_high": "algorithm.clip_high",
    "actor.dual_clip": "algorithm.dual_clip", "actor.ppo_epochs": "algorithm.ppo_epochs",
    "actor.mini_batch_size": "algorithm.mini_batch_groups",
    "actor.micro_batch_size": "learner.micro_batch_sequences",
    "actor.gradient_checkpointing": "learner.gradient_checkpointing",
    "algorithm.use_kl_loss": "algorithm.kl.enabled", "algorithm.kl_coef": "algorithm.kl.coef",
    "algorithm.kl_estimator": "algorithm.kl.estimator",
    "algorithm.entropy.adaptive": "algorithm.entropy.mode (adaptive | fixed)",
    "algorithm.filter.zero_variance": "algorithm.filter.drop_zero_advantage",
    "algorithm.sample_buffer.capacity": "algorithm.sample_buffer.capacity_groups",
    "trainer.batch_size": "trainer.prompts_per_step",
    "data.prompt_key": "data.fields.prompt",
}


# --- checks on the composed configuration -----------------------------------------------------
class ConfigError(ValueError):
    """An inconsistent or unknown setting, found before anything starts."""


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys of the composed config that the schema does not have, as dotted paths (Hydra's
    ``+trainer.totl_steps=3`` adds them to typed sections without complaint)."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if node is None or node._is_none() or node._is_missing() or node._is_interpolation():
            return
        if isinstance(node, DictConfig):
            schema = OmegaConf.get_type(node)
            allowed = {f.name for f in fields(schema)} if is_dataclass(schema) else None  # plain dicts: any key
            for key in node.keys():
                if allowed is not None and key not in allowed:
                    found.append(f"{path}{key}")
                else:
                    walk(node._get_node(key), f"{path}{key}.")
        elif isinstance(node, ListConfig):
            for i in range(len(node)):
                walk(node._get_node(i), f"{path}{i}.")

    walk(cfg, "")
    return found


def refuse_unknown_keys(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming every unknown key, with its new name or the closest known one."""
    unknown = unknown_keys(cfg)
    if not unknown:
        return
    lines = []
    for key in unknown:
        value = OmegaConf.select(cfg, key)
        leaves = _leaf_keys(value, key) if isinstance(value, DictConfig) else [key]
        for leaf_key in leaves:
            section, _, leaf = leaf_key.rpartition(".")
            parent = OmegaConf.select(cfg, section) if section else cfg
            schema = OmegaConf.get_type(parent) if isinstance(parent, DictConfig) else None
            known = [f.name for f in fields(schema)] if is_dataclass(schema) else []
            close = difflib.get_close_matches(leaf, known, n=1)
            if leaf_key in RENAMED:
                lines.append(f"{leaf_key}: renamed to {RENAMED[leaf_key]}")
            elif close:
                suggestion = f"{section}.{close[0]}" if section else close[0]
                lines.append(f"{leaf_key}: no such option; did you mean {suggestion}?")
            else:
                lines.append(f"{leaf_key}: no such option")
    raise ConfigError("unknown configuration keys (every option is documented in or1/config.py):\n  "
                      + "\n  ".join(lines))


def renamed_keys_hint(overrides: list[str]) -> str | None:
    """The rename of every command-line override that uses a key renamed in ``RENAMED``, or None."""
    hits = []
    for arg in overrides:
        key = arg.lstrip("+~").split("=", 1)[0]
        if key in RENAMED:
            hits.append(f"{key}: renamed to {RENAMED[key]}")
    return ("renamed configuration keys:\n  " + "\n  ".join(hits)) if hits else None


def _leaf_keys(node: DictConfig, prefix: str) -> list[str]:
    out = []
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and len(child):
            out += _leaf_keys(child, f"{prefix}.{key}")
        else:
            out.append(f"{prefix}.{key}")
    return out


def validate_config(cfg: OR1Config) -> list[str]:
    """Refuse inconsistent settings with a message naming the fields; return warnings for
    settings that are legal but almost certainly not what was meant (also logged)."""
    a, r, lr, t, o = cfg.algorithm, cfg.rollout, cfg.learner, cfg.trainer, cfg.optim
    errors: list[str] = []
    warnings: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    need(t.total_steps >= 0, f"trainer.total_steps must be >= 0, got {t.total_steps}")
    need(t.prompts_per_step >= 1, f"trainer.prompts_per_step must be >= 1, got {t.prompts_per_step}")
    need(t.log_samples >= 0, f"trainer.log_samples must be >= 0 (0: none), got {t.log_samples}")
    need(t.progress_interval_s > 0, f"trainer.progress_interval_s must be > 0, got {t.progress_interval_s}")
    need(r.n >= 1, f"rollout.n must be >= 1, got {r.n}")
    need(r.val_n >= 1, f"rollout.val_n must be >= 1, got {r.val_n}")
    need(r.temperature >= 0 and r.val_temperature >= 0, "rollout.temperature and rollout.val_temperature must be >= 0")
    need(0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    need(r.max_response_length >= 1, f"rollout.max_response_length must be >= 1, got {r.max_response_length}")
    need(r.sleep_level in (1, 2), f"rollout.sleep_level must be 1 or 2, got {r.sleep_level}")
    need(a.ppo_epochs >= 1, f"algorithm.ppo_epochs must be >= 1, got {a.ppo_epochs}")
    need(a.mini_batch_groups >= 0, f"algorithm.mini_batch_groups must be >= 0 (0: the whole batch), "
                                   f"got {a.mini_batch_groups}")
    need(a.dual_clip is None or a.dual_clip > 1, f"algorithm.dual_clip must be > 1 (or null), got {a.dual_clip}")
    need(a.clip_low >= 0 and a.clip_high >= 0, "algorithm.clip_low and algorithm.clip_high must be >= 0")
    need(a.clip_low < 1, f"algorithm.clip_low must be < 1 (the ratio's lower bound is 1 - clip_low), got {a.clip_low}")
    e = a.entropy
    need(e.min_coef <= e.max_coef, f"algorithm.entropy.min_coef={e.min_coef} is above algorithm.entropy.max_coef="
                                   f"{e.max_coef}: the coefficient would have no valid value")
    need(e.delta >= 0, f"algorithm.entropy.delta must be >= 0, got {e.delta}")
    need(a.filter.max_refill_rounds >= 0, "algorithm.filter.max_refill_rounds must be >= 0")
    need(0 <= a.filter.mastered_threshold <= 1, "algorithm.filter.mastered_threshold must be in [0, 1]")
    need(a.sample_buffer.capacity_groups >= 1, "algorithm.sample_buffer.capacity_groups must be >= 1")
    need(a.sample_buffer.mix_ratio >= 0, "algorithm.sample_buffer.mix_ratio must be >= 0")
    for i, st in enumerate(a.stages):
        need(st.steps >= 0 and st.max_response_length >= 1,
             f"algorithm.stages[{i}] needs steps >= 0 and max_response_length >= 1")
    need(lr.compute_dtype != DType.float16,
         "learner.compute_dtype=float16 is not supported: half precision needs loss scaling, which or1 does not "
         "implement (FSDP2 would train without it, DeepSpeed would silently compute in float32); use bfloat16")
    need(cfg.model.dtype != DType.float16,
         "model.dtype=float16 is not supported for the master weights; use float32 (or bfloat16)")
    need(cfg.algorithm.filter.max_oversample >= 1, "algorithm.filter.max_oversample must be >= 1 (1: refill "
         f"rounds ask for the deficit only), got {cfg.algorithm.filter.max_oversample}")
    need(a.filter.refill or a.filter.refill_mode == RefillMode.rounds,
         "algorithm.filter.refill_mode=streaming decides refills while generating, but algorithm.filter.refill is "
         "false: set algorithm.filter.refill=true (or leave refill_mode at rounds)")
    need(t.off_policy_steps in (0, 1), f"trainer.off_policy_steps must be 0 (on-policy) or 1 (generation "
         f"overlaps the previous update), got {t.off_policy_steps}")
    need(t.off_policy_steps == 0 or t.gpus_per_node == 0 or t.placement == Placement.split,
         "trainer.off_policy_steps=1 overlaps generation with the update, but trainer.placement=colocated puts "
         "vLLM to sleep while the learners train: set trainer.placement=split (vLLM on GPUs of its own)")
    need(a.tis_cap is None or a.tis_cap > 0, f"algorithm.tis_cap must be > 0 (or null: off), got {a.tis_cap}")
    need(a.tis_cap is None or t.off_policy_steps == 0,
         "algorithm.tis_cap reweights the learner's recomputed log-probs towards vLLM's; with "
         "trainer.off_policy_steps=1 the ratio divides by vLLM's log-probs already: set one of them only")
    need(lr.num_workers >= 1, f"learner.num_workers must be >= 1, got {lr.num_workers}")
    need(lr.max_tokens_per_micro_batch >= 0, "learner.max_tokens_per_micro_batch must be >= 0 (0: by "
         f"learner.micro_batch_sequences), got {lr.max_tokens_per_micro_batch}")
    need(lr.micro_batch_sequences >= 0, f"learner.micro_batch_sequences must be >= 0, got {lr.micro_batch_sequences}")
    need(lr.max_tokens_per_micro_batch > 0 or lr.micro_batch_sequences >= 1,
         "learner.max_tokens_per_micro_batch=0 forms micro-batches by learner.micro_batch_sequences, which must "
         "then be >= 1")
    need(lr.logits_chunk_tokens >= 0, "learner.logits_chunk_tokens must be >= 0 (0: whole logits)")
    need(lr.backend != LearnerBackend.deepspeed or lr.zero_stage in (0, 1, 2, 3),
         f"learner.zero_stage must be 0..3, got {lr.zero_stage}")
    need(lr.sync_bucket_mb > 0, f"learner.sync_bucket_mb must be > 0, got {lr.sync_bucket_mb}")
    need(o.lr >= 0 and o.lr_warmup_steps >= 0, "optim.lr and optim.lr_warmup_steps must be >= 0")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas must be two values in [0, 1), "
                                                                  f"got {list(o.betas)}")
    rw = cfg.reward
    need(rw.timeout_s > 0, f"reward.timeout_s must be > 0, got {rw.timeout_s}")
    need(rw.num_workers >= 1, f"reward.num_workers must be >= 1, got {rw.num_workers}")
    need(rw.max_failed_steps >= 1, f"reward.max_failed_steps must be >= 1, got {rw.max_failed_steps}")
    for source, route in rw.routes.items():
        need(bool(route.fn) or bool(route.terms),
             f"reward.routes.{source} names no reward: give it fn: <function> or terms: [...]")
    need(t.resume in ("auto", "off") or bool(t.resume), "trainer.resume must be auto, off or a path")
    longest = max(max([st.max_response_length for st in a.stages] or [r.max_response_length]),
                  r.val_max_response_length or 0)
    needed = cfg.data.max_prompt_length + longest
    need(r.max_model_len >= needed, f"rollout.max_model_len={r.max_model_len} cannot hold data.max_prompt_length + "
                                    f"the longest response limit (stages, rollout.val_max_response_length) = {needed}")
    need(r.val_max_response_length is None or r.val_max_response_length >= 1,
         "rollout.val_max_response_length must be >= 1 (or null: the longest stage's limit)")
    if errors:
        raise ConfigError("inconsistent settings:\n  " + "\n  ".join(errors))

    if r.n < 2:
        warnings.append(f"rollout.n={r.n}: groups of one response have zero advantage; nothing will be learned")
    if r.val_n > 1 and r.val_temperature == 0:
        warnings.append(f"rollout.val_n={r.val_n} with rollout.val_temperature=0: greedy decoding gives the same "
                        f"answer {r.val_n} times (set val_temperature > 0 for avg@k, or val_n=1)")
    if cfg.model.dtype == DType.bfloat16 and lr.backend == LearnerBackend.fsdp:
        warnings.append("model.dtype=bfloat16 with the FSDP2 backend keeps the master weights in bfloat16: updates "
                        "smaller than ~1/256 of a weight (lr 1e-6 steps) round away; use model.dtype=float32 with "
                        "learner.compute_dtype=bfloat16")
    if e.mode == EntropyMode.fixed and e.fixed_coef < 0:
        warnings.append(f"algorithm.entropy.fixed_coef={e.fixed_coef} < 0 penalises entropy")
    for w in warnings:
        log.warning("config: %s", w)
    return warnings
