"""Where the learner ranks and vLLM engines run, how much memory they need, and starting them.

``plan_placement`` is a pure function of the config: which GPU (or how many CPU cores) every
actor gets. ``trainer.dry_run=true`` prints it with a memory estimate per GPU and exits;
a real launch checks it against the Ray cluster first (``check_cluster``) and fails with a
message naming what is missing before anything starts. ``start_workers`` then creates the
actors with Ray placement groups (one per node, one bundle per GPU).

Layouts on GPUs (G = trainer.nnodes x trainer.gpus_per_node):
- colocated: learner rank i on GPU i (all G GPUs) and vLLM engine j on GPUs [j*t, (j+1)*t) (all G
  GPUs, t = rollout.tensor_parallel_size); each GPU holds a learner and a vLLM shard, and vLLM
  sleeps while the learner works.
- split: learner ranks on GPUs 0..W-1, engines on the GPUs after them (each engine's t GPUs on
  one node); nothing shares a GPU.
On CPU (trainer.gpus_per_node=0) every actor reserves its ``num_cpus`` cores.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from or1.config import DType, OR1Config, Placement

log = logging.getLogger("or1")

GiB = 2**30


@dataclass
class Slot:
    """One actor's place: ``gpus`` are global GPU indices (node * gpus_per_node + local index)."""

    role: str  # learner | rollout
    index: int  # learner rank / engine index
    gpus: list[int] = field(default_factory=list)
    cpus: float = 0.0

    def nodes(self, gpus_per_node: int) -> list[int]:
        return sorted({g // gpus_per_node for g in self.gpus}) if gpus_per_node else [0]


@dataclass
class PlacementPlan:
    mode: str  # cpu | colocated | split
    nnodes: int
    gpus_per_node: int
    learners: list[Slot]
    engines: list[Slot]

    @property
    def total_gpus(self) -> int:
        return self.nnodes * self.gpus_per_node

    @property
    def total_cpus(self) -> float:
        return sum(s.cpus for s in self.learners + self.engines)


def plan_placement(cfg: OR1Config) -> PlacementPlan:
    """Assign every learner rank and vLLM engine its GPUs (or CPU cores); raise on impossible layouts."""
    t, lr = cfg.trainer, cfg.learner
    world, engines, tp = lr.num_workers, cfg.rollout.num_engines, cfg.rollout.tensor_parallel_size
    if world < 1 or engines < 1 or tp < 1 or t.nnodes < 1 or t.gpus_per_node < 0:
        raise ValueError("learner.num_workers, rollout.num_engines, rollout.tensor_parallel_size and "
                         "trainer.nnodes must be >= 1, trainer.gpus_per_node >= 0")
    if t.gpus_per_node == 0:
        if tp != 1:
            raise ValueError("rollout.tensor_parallel_size > 1 needs GPUs (trainer.gpus_per_node > 0)")
        return PlacementPlan("cpu", t.nnodes, 0,
                             [Slot("learner", r, cpus=lr.num_cpus) for r in range(world)],
                             [Slot("rollout", j, cpus=cfg.rollout.num_cpus) for j in range(engines)])
    gpn, total = t.gpus_per_node, t.nnodes * t.gpus_per_node
    if gpn % tp:
        raise ValueError(f"rollout.tensor_parallel_size={tp} must divide trainer.gpus_per_node={gpn} "
                         "(an engine's GPUs are on one node)")
    if t.placement == Placement.colocated:
        if world != total or engines * tp != total:
            raise ValueError(
                f"colocated placement shares all {total} GPUs (trainer.nnodes={t.nnodes} x trainer.gpus_per_node="
                f"{gpn}): set learner.num_workers={total} and rollout.num_engines={total // tp} "
                f"(got {world} and {engines} with tensor_parallel_size={tp})")
        first_engine_gpu = 0
    else:
        first_engine_gpu = -(-world // tp) * tp  # engines start on a tp-aligned GPU, so none straddles nodes
        if first_engine_gpu + engines * tp > total:
            raise ValueError(
                f"split placement needs {world} learner GPUs + {engines} engines x {tp} GPUs "
                f"(= {first_engine_gpu + engines * tp} with alignment) but trainer.nnodes x "
                f"trainer.gpus_per_node = {total}")
    learners = [Slot("learner", r, [r], lr.num_cpus) for r in range(world)]
    slots = [Slot("rollout", j, list(range(first_engine_gpu + j * tp, first_engine_gpu + (j + 1) * tp)),
                  cfg.rollout.num_cpus) for j in range(engines)]
    return PlacementPlan(str(t.placement), t.nnodes, gpn, learners, slots)


def plan_engines_only(cfg: OR1Config) -> PlacementPlan:
    """vLLM engines and no learner (``or1.data.filter``): engine j on GPUs [j*t, (j+1)*t), or on CPU cores."""
    t, engines, tp = cfg.trainer, cfg.rollout.num_engines, cfg.rollout.tensor_parallel_size
    if engines < 1 or tp < 1 or t.nnodes < 1 or t.gpus_per_node < 0:
        raise ValueError("rollout.num_engines, rollout.tensor_parallel_size and trainer.nnodes must be >= 1")
    if t.gpus_per_node == 0:
        if tp != 1:
            raise ValueError("rollout.tensor_parallel_size > 1 needs GPUs (trainer.gpus_per_node > 0)")
        return PlacementPlan("cpu", t.nnodes, 0, [], [Slot("rollout", j, cpus=cfg.rollout.num_cpus)
                                                       for j in range(engines)])
    gpn, total = t.gpus_per_node, t.nnodes * t.gpus_per_node
    if gpn % tp or engines * tp > total:
        raise ValueError(f"{engines} engines x rollout.tensor_parallel_size={tp} GPUs need {engines * tp} GPUs, each "
                         f"engine's on one node; trainer.nnodes x trainer.gpus_per_node = {t.nnodes} x {gpn}")
    return PlacementPlan("split", t.nnodes, gpn, [], [Slot("rollout", j, list(range(j * tp, (j + 1) * tp)),
                                                          cfg.rollout.num_cpus) for j in range(engines)])


# --- memory estimate --------------------------------------------------------------------------
@dataclass
class ModelShape:
    num_params: float
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None


def model_shape(cfg: OR1Config) -> ModelShape | None:
    """Parameter count (and shape, when model.path's config is readable here) for the estimate."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        # local directory or the hub cache only: planning must not wait on a network
        hf = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code,
                                        local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf, trust_remote_code=cfg.model.trust_remote_code)
        n = sum(p.numel() for p in model.parameters())
        return ModelShape(float(n), hf.hidden_size, hf.num_hidden_layers, hf.vocab_size)
    except Exception:  # noqa: BLE001 - a hub name offline, a path that exists only on the cluster
        if cfg.model.num_params_b:
            return ModelShape(cfg.model.num_params_b * 1e9)
        return None


def estimate_memory_gib(cfg: OR1Config, plan: PlacementPlan, shape: ModelShape) -> dict[str, float]:
    """Rough memory per GPU (GiB) for planning: the parts, then the peak of each phase.

    Parts (activations only when the model's shape is known):

    - ``learner_weights``: the master weights, sharded over the ranks (FSDP2 / ZeRO-3), plus the
      frozen reference model when ``algorithm.kl.enabled``: 4 bytes per parameter in float32, 2 in
      bfloat16, divided by the number of learner ranks.
    - ``learner_state``: weights + gradients + AdamW's two moments during an update: 16 bytes per
      parameter in float32, 8 in bfloat16 (plus the reference weights), sharded.
    - ``learner_activations``, one micro-batch of the most tokens it can hold
      (``micro_batch_tokens_at_most``): with gradient checkpointing the
      layer inputs (hidden x 2 bytes per token and layer) plus one layer's working set; without,
      ~34 x hidden bytes per token and layer (Korthikanti et al. 2022, flash attention).
    - ``learner_logits``: the float32 logits, their softmax and gradient (3 x 4 bytes x vocab per
      token) of the whole micro-batch, or of one chunk with ``learner.logits_chunk_tokens``.
    - ``sync_bucket``: the parameters gathered at once for a push or a save (``learner.sync_bucket_mb``).
    - ``vllm_weights`` (2 bytes per parameter / tensor_parallel_size) inside ``vllm_total``:
      ``rollout.gpu_memory_utilization`` of the GPU (weights + KV cache).

    Phases, on the learner's GPU (the one it shares with vLLM when colocated):

    - ``init``: each rank builds the model on the meta device and reads only its shards from the
      safetensors, so only ``learner_weights`` is allocated; colocated engines already sleep
      (``sleep_level=2`` frees their weights and KV cache).
    - ``update``: ``learner_state`` + activations + logits; colocated vLLM sleeps.
    - ``save``: resident state (no gradients) + one gathered bucket on its way to host memory.
    - ``generation`` (colocated): resident state beside vLLM's whole share. A push (wake the
      weights, load bucket by bucket) stays below it.
    """
    world = len(plan.learners)
    master_bytes = 4 if cfg.model.dtype == DType.float32 else 2
    weights = shape.num_params * master_bytes / world / GiB
    reference = weights if cfg.algorithm.kl.enabled else 0.0  # the frozen reference: the same shards again
    out = {"learner_weights": weights + reference,
           "learner_state": 4 * weights + reference}
    # between updates the gradients are freed (zero_grad(set_to_none=True)): weights and moments stay
    resident = 3 * weights + reference
    activations = logits = 0.0
    if shape.hidden_size:
        tokens = micro_batch_tokens_at_most(cfg)
        # the 34h rule counts 2-byte values
        scale = 1 if cfg.learner.compute_dtype in (DType.bfloat16, DType.float16) else 2
        checkpointing = cfg.learner.gradient_checkpointing
        per_layer = scale * (2 if checkpointing else 34) * shape.hidden_size * tokens
        working = scale * 34 * shape.hidden_size * tokens if checkpointing else 0
        activations = out["learner_activations"] = (per_layer * shape.num_layers + working) / GiB
        # whole: every position's logits at once; chunked: one chunk's (learner.logits_chunk_tokens)
        logit_rows = min(tokens, cfg.learner.logits_chunk_tokens) if cfg.learner.logits_chunk_tokens > 0 else tokens
        logits = out["learner_logits"] = 3 * 4 * shape.vocab_size * logit_rows / GiB
    out["sync_bucket"] = cfg.learner.sync_bucket_mb * 2**20 / GiB
    out["vllm_weights"] = shape.num_params * 2 / cfg.rollout.tensor_parallel_size / GiB
    out["vllm_total"] = cfg.rollout.gpu_memory_utilization * cfg.trainer.gpu_memory_gib
    out["peak_init"] = out["learner_weights"]
    out["peak_update"] = out["learner_state"] + activations + logits
    out["peak_save"] = resident + out["sync_bucket"]
    phases = ["peak_init", "peak_update", "peak_save"]
    if plan.mode == "colocated":
        out["peak_generation"] = resident + out["vllm_total"]
        phases.append("peak_generation")
    else:
        out["peak_vllm_gpu"] = out["vllm_total"]
        phases.append("peak_vllm_gpu")
    out["peak"] = max(out[p] for p in phases)
    return out


def micro_batch_tokens_at_most(cfg: OR1Config) -> int:
    """The most tokens one learner micro-batch computes: the token budget, or one full-length sequence
    when that is longer (it runs alone); by rows (no budget), the rows at full length."""
    lr = cfg.learner
    if lr.max_tokens_per_micro_batch > 0:
        return max(lr.max_tokens_per_micro_batch, cfg.rollout.max_model_len)
    return lr.micro_batch_sequences * cfg.rollout.max_model_len


def describe(cfg: OR1Config, plan: PlacementPlan, shape: ModelShape | None) -> str:
    """The plan as text: what ``trainer.dry_run=true`` prints."""
    lines = [f"placement plan for recipe {cfg.recipe!r} ({plan.mode})"]
    if plan.mode == "cpu":
        lines.append(f"  CPU only: {len(plan.learners)} learner rank(s) x {cfg.learner.num_cpus} CPU, "
                     f"{len(plan.engines)} vLLM engine(s) x {cfg.rollout.num_cpus} CPU; "
                     f"{plan.total_cpus:g} CPUs in all")
    else:
        lines.append(f"  {plan.nnodes} node(s) x {plan.gpus_per_node} GPUs = {plan.total_gpus} GPUs, "
                     f"{plan.total_cpus:g} CPUs")
        lines.append(f"  learner ({cfg.learner.backend}, {len(plan.learners)} ranks): "
                     + _ranges([s.gpus[0] for s in plan.learners], "GPU"))
        lines.append(f"  vLLM ({len(plan.engines)} engines, tensor_parallel_size "
                     f"{cfg.rollout.tensor_parallel_size}): "
                     + ", ".join(f"engine {s.index} on node {s.nodes(plan.gpus_per_node)[0]} GPUs "
                                 f"{[g % plan.gpus_per_node for g in s.gpus]}" for s in plan.engines[:4])
                     + (f", ... ({len(plan.engines) - 4} more)" if len(plan.engines) > 4 else ""))
    if shape is None:
        lines.append("  memory: unknown (model.path's config is not readable here and model.num_params_b is unset)")
    else:
        mem = estimate_memory_gib(cfg, plan, shape)
        lines.append(f"  model: {shape.num_params / 1e9:.2f}B parameters")
        parts = [k for k in mem if not k.startswith("peak")]
        lines.append("  memory per GPU (GiB, estimate): " + ", ".join(f"{k} {mem[k]:.1f}" for k in parts))
        lines.append("  peaks per GPU (GiB): " + ", ".join(f"{k.removeprefix('peak_')} {mem[k]:.1f}"
                                                          for k in mem if k.startswith("peak_")))
        if "learner_activations" not in mem:
            lines.append("    (activations not estimated: the model's config is not readable here)")
        if plan.mode != "cpu" and mem["peak"] > cfg.trainer.gpu_memory_gib:
            lines.append(f"  WARNING: the estimated peak {mem['peak']:.1f} GiB exceeds trainer.gpu_memory_gib="
                         f"{cfg.trainer.gpu_memory_gib:g}; more GPUs, gradient checkpointing or a smaller "
                         "learner.max_tokens_per_micro_batch would help")
            if mem.get("learner_logits", 0.0) > mem["learner_state"] + mem["learner_activations"]:
                lines.append("    most of it is one micro-batch's full-vocabulary float32 logits: "
                             "learner.logits_chunk_tokens=2048 computes them in chunks")
    return "\n".join(lines)


def _ranges(values: list[int], label: str) -> str:
    return f"{label}s {values[0]}..{values[-1]}" if len(values) > 1 else f"{label} {values[0]}"


# --- the cluster -------------------------------------------------------------------------------
def check_cluster(plan: PlacementPlan, nodes: list[dict]) -> None:
    """Fail fast, naming what is missing, when the Ray cluster cannot hold the plan.

    ``nodes`` is ``ray.nodes()`` (alive nodes' ``Resources``).
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    cpus = sum(r.get("CPU", 0) for r in alive)
    gpus = sum(r.get("GPU", 0) for r in alive)
    missing = []
    if plan.mode == "cpu":
        if cpus < plan.total_cpus:
            missing.append(f"{plan.total_cpus:g} CPUs (learner.num_workers x learner.num_cpus + "
                           f"rollout.num_engines x rollout.num_cpus), the Ray cluster has {cpus:g}")
    else:
        full_nodes = sum(1 for r in alive if r.get("GPU", 0) >= plan.gpus_per_node)
        if gpus < plan.total_gpus or full_nodes < plan.nnodes:
            missing.append(f"{plan.nnodes} node(s) with {plan.gpus_per_node} GPUs each (trainer.nnodes x "
                           f"trainer.gpus_per_node = {plan.total_gpus} GPUs); the Ray cluster has {gpus:g} GPUs "
                           f"on {len(alive)} node(s), {full_nodes} of them with {plan.gpus_per_node} GPUs")
        if cpus < plan.total_cpus:
            missing.append(f"{plan.total_cpus:g} CPUs, the Ray cluster has {cpus:g}")
    if missing:
        raise RuntimeError("not enough resources for this recipe: needs " + "; needs ".join(missing)
                           + ". Join a larger cluster (trainer.ray_address=auto), or shrink the run "
                           "(trainer.dry_run=true prints the plan).")


@dataclass
class Workers:
    learners: object  # or1.workers.group.LearnerGroup
    rollouts: object  # or1.workers.group.RolloutGroup
    placement_groups: list  # released by remove()

    def remove(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.rollouts.actors + self.learners.actors:
            ray.kill(actor)
        for pg in self.placement_groups:
            remove_placement_group(pg)


def start_workers(cfg: OR1Config, plan: PlacementPlan, timeout_s: float = 120.0,
                  shared_fs_marker: str | None = None) -> Workers:
    """Reserve the plan's resources with Ray placement groups, then start every actor in its bundle:
    on GPUs the vLLM engines first (colocated: then asleep), the learner ranks after them. Each
    learner rank checks that it sees ``shared_fs_marker`` (a file the driver wrote into
    ``trainer.output_dir``) before anything else.

    CPU runs: one group, a bundle per actor. GPU runs: a group per node (``STRICT_PACK``), one
    bundle per GPU; a learner rank takes (a share of) its GPU's bundle; an engine actor holds no GPU
    itself: vLLM's Ray executor starts one worker per GPU on the engine's bundles
    (``VLLM_RAY_BUNDLE_INDICES``) inside the same group.
    """
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from or1.workers.group import LearnerGroup, RolloutGroup
    from or1.workers.learner import Learner
    from or1.workers.rollout import RolloutWorker

    slots = plan.learners + plan.engines
    if plan.mode == "cpu":
        groups = [placement_group([{"CPU": s.cpus} for s in slots], strategy="PACK", name="or1-cpu")]
        bundle_of = {(s.role, s.index): (0, i) for i, s in enumerate(slots)}
    else:
        gpn = plan.gpus_per_node
        bundle_cpus = {g: 0.0 for g in range(plan.total_gpus)}
        for s in slots:
            bundle_cpus[s.gpus[0]] += s.cpus
        groups = [placement_group([{"GPU": 1, "CPU": bundle_cpus[node * gpn + i]} for i in range(gpn)],
                                  strategy="STRICT_PACK", name=f"or1-node{node}") for node in range(plan.nnodes)]
        bundle_of = {(s.role, s.index): divmod(s.gpus[0], gpn) for s in slots}
    ready, _ = ray.wait([pg.ready() for pg in groups], num_returns=len(groups), timeout=timeout_s)
    if len(ready) < len(groups):
        for pg in groups:
            ray.util.remove_placement_group(pg)
        raise RuntimeError(f"Ray could not place {len(groups) - len(ready)} of {len(groups)} placement group(s) "
                           f"within {timeout_s:.0f}s (is another job holding the resources?)")

    def at(slot: Slot, capture: bool = False):
        group, bundle = bundle_of[(slot.role, slot.index)]
        return PlacementGroupSchedulingStrategy(groups[group], bundle, placement_group_capture_child_tasks=capture)

    colocated = plan.mode == "colocated"
    cores = cpu_cores(plan) if cfg.trainer.off_policy_steps else {}
    engines = []
    for s in plan.engines:
        gpu_args = (False, None) if plan.mode == "cpu" else (colocated, [g % plan.gpus_per_node for g in s.gpus])
        engines.append(ray.remote(num_cpus=s.cpus, num_gpus=0)(RolloutWorker).options(
            scheduling_strategy=at(s, capture=plan.mode != "cpu")).remote(
            cfg.model.path, cfg.rollout, cfg.trainer.seed + s.index, *gpu_args, cores.get(("rollout", s.index))))
    rollouts = RolloutGroup(engines)
    if not plan.learners:  # engines only (or1.data.filter)
        return Workers(LearnerGroup([]), rollouts, groups)
    if plan.mode != "cpu":
        # vLLM needs total x gpu_memory_utilization free on its GPUs when it starts (it sizes its KV
        # cache then): the engines start, and colocated ones fall asleep, before any learner allocates.
        # On CPU nothing is contended and both start side by side.
        ray.get([e.ready.remote() for e in engines])
        if colocated:
            rollouts.sleep(cfg.rollout.sleep_level)
    # rank 0's node hosts the process group's rendezvous; ask that node for its address and a free port
    master_addr, port = ray.get(ray.remote(num_cpus=0)(_node_address).options(
        scheduling_strategy=at(plan.learners[0])).remote())
    learner_gpus = 0 if plan.mode == "cpu" else 0.5 if colocated else 1  # colocated: shared with vLLM
    learners = [ray.remote(num_cpus=s.cpus, num_gpus=learner_gpus)(Learner).options(scheduling_strategy=at(s)).remote(
        cfg.model, cfg.optim, cfg.algorithm, cfg.learner, rank=s.index, world_size=len(plan.learners),
        master_addr=master_addr, master_port=port, seed=cfg.trainer.seed, shared_fs_marker=shared_fs_marker,
        cpu_cores=cores.get(("learner", s.index)))
        for s in plan.learners]
    return Workers(LearnerGroup(learners), rollouts, groups)


def cpu_cores(plan: PlacementPlan, available: list[int] | None = None) -> dict[tuple[str, int], list[int]]:
    """Cores of this machine for each actor of a one-node CPU plan whose engines generate while the
    learners train (``trainer.off_policy_steps=1``): engines first, then learner ranks, each
    ``floor(num_cpus)`` (at least 1) cores of its own, so neither slows the other down. Empty (no
    pinning) when they do not fit the cores this process may use, or on GPUs / several nodes."""
    if plan.mode != "cpu" or plan.nnodes != 1:
        return {}
    available = sorted(os.sched_getaffinity(0)) if available is None else available
    slots = plan.engines + plan.learners
    wanted = [max(1, int(s.cpus)) for s in slots]
    if sum(wanted) > len(available):
        log.warning("off-policy on CPU: the engines and learner ranks want %d cores of their own, this machine "
                    "has %d: they share them (generation and training slow each other down)", sum(wanted),
                    len(available))
        return {}
    out, start = {}, 0
    for s, count in zip(slots, wanted):
        out[(s.role, s.index)] = available[start:start + count]
        start += count
    return out


class LazyEngines:
    """vLLM engines without learners (``or1.data.filter``, ``or1.eval``), started at the first
    ``generate``: a command with nothing left to sample (a finished filter run again with other
    thresholds) starts none."""

    def __init__(self, cfg: OR1Config, plan: PlacementPlan, on_start=lambda: None):
        self.cfg, self.plan, self.on_start, self.workers = cfg, plan, on_start, None

    def generate(self, *args, **kwargs):
        return self.started().generate(*args, **kwargs)

    def generate_stream(self, *args, **kwargs):
        return self.started().generate_stream(*args, **kwargs)

    def started(self):
        """The engines' ``RolloutGroup``, started now if this is the first call."""
        if self.workers is None:
            import ray

            from or1.startup import connect_ray

            connect_ray(self.cfg)
            check_cluster(self.plan, ray.nodes())
            t0 = time.time()
            self.workers = start_workers(self.cfg, self.plan)
            self.on_start()  # reward models (rm: terms) are Ray actors too
            ray.get([a.ready.remote() for a in self.workers.rollouts.actors])
            log.info("%d vLLM engine(s) ready in %.1fs", len(self.workers.rollouts.actors), time.time() - t0)
        return self.workers.rollouts

    def close(self) -> None:
        if self.workers is not None:
            self.workers.remove()


def free_port() -> int:
    """A TCP port free on this machine now (the process group's rendezvous binds it next)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _node_address() -> tuple[str, int]:
    import ray

    return ray.util.get_node_ip_address(), free_port()
