"""Starting a run: every cheap check first, in seconds, then the expensive parts.

``preflight(cfg)`` runs everything that can fail cheaply, before the tiny model's warm-up, Ray or
any actor:

1. configuration consistency (``or1.config.validate_config``) and the placement plan (unknown keys
   and bad choices are refused earlier, when Hydra composes the config: ``or1.train``); paths made
   absolute on the driver; the installed vLLM and Ray against the tested versions (a warning);
2. the tiny recipe's data, written if missing (inside ``trainer.output_dir`` only);
3. data files (JSONL, Parquet, saved datasets): they exist and parse, rows are mapped to or1's
   fields, bad rows skipped or refused (``data.bad_rows``; each named by file and row), identical
   prompts removed, all counted (``or1.data.rows``);
4. ``model.path``: a local model directory, or a hub name that is cached or on the hub (a
   missing path is "does not exist", naming it, not a hub error);
5. the resume target (``trainer.resume`` / ``trainer.init_from``) resolves, and is a checkpoint
   of the same model and learner backend (and, for DeepSpeed, world size);
6. rewards: every function imported and its signature checked, start-up hooks run (the code
   verifier: the sandbox answers), the pool's workers load and warm them, and each term is tried
   once on a real data row (its return value must be a score);
7. Ray: an explicit ``trainer.ray_address`` answers (Ray itself would wait forever).

``build(cfg)`` then connects Ray and checks the cluster's resources, creates the tiny model if
the recipe asks for it (minutes), tokenizes the prompts, writes the shared-filesystem marker every
learner rank must see, starts the actors (on GPUs vLLM first, see ``or1.placement.start_workers``)
and returns a ready ``Trainer``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from omegaconf import OmegaConf

from or1.checkpoint import STATE_FILE, resolve_resume
from or1.config import ConfigError, LearnerBackend, OR1Config, Placement, TinyTask, validate_config
from or1.data.dataset import PromptDataset
from or1.data.rows import DataRows, load_rows, write_data_report
from or1.data.sources import DataError
from or1.placement import PlacementPlan, plan_placement
from or1.rewards.manager import RewardManager
from or1.trainer import Components, Trainer

log = logging.getLogger("or1")
T = TypeVar("T")


class StartupError(ValueError):
    """A path, address or checkpoint that cannot be used; found before anything expensive starts."""


@dataclass
class Preflight:
    """What the cheap checks established, for ``build`` to continue from."""

    plan: PlacementPlan
    train_rows: DataRows
    val_rows: DataRows | None
    rewards: RewardManager  # started: its pool's workers are warm, its sandbox (if local) is up
    resume_from: Path | None
    create_tiny_model: bool  # tiny.enabled and model.path is missing inside trainer.output_dir


def preflight(cfg: OR1Config, reward_pool=None) -> Preflight:
    """Every cheap check, before the tiny bootstrap, Ray or any actor (see the module docstring).

    ``reward_pool``: an already running ``RewardPool`` to score with (tests share one); by default
    the reward manager starts its own."""
    t0 = time.time()
    validate_config(cfg)
    quiet_third_party(cfg)
    make_paths_absolute(cfg)
    check_stack_versions()
    try:
        plan = plan_placement(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.tiny.enabled:
        write_tiny_data(cfg)
    train_rows, val_rows = read_data(cfg)
    create_tiny_model = cfg.tiny.enabled and not Path(cfg.model.path).exists() and _inside_output_dir(
        cfg, cfg.model.path)
    if not create_tiny_model:
        check_model_path(cfg)
    resume_from = resolve_resume_target(cfg)
    if resume_from is not None and not create_tiny_model:
        check_resume_compatible(resume_from, cfg)  # another model, backend or world size: refused now
    check_ray_address(cfg.trainer.ray_address)
    rewards = RewardManager(cfg.reward, pool=reward_pool, run_dir=cfg.trainer.output_dir)
    try:
        rows = train_rows.rows + (val_rows.rows if val_rows else [])
        where = train_rows.where + (val_rows.where if val_rows else [])
        rewards.check_on_rows(rows, where)
    except BaseException:
        rewards.close()
        raise
    log.info("start-up checks passed in %.1fs", time.time() - t0)
    return Preflight(plan, train_rows, val_rows, rewards, resume_from, create_tiny_model)


def build(cfg: OR1Config) -> Trainer:
    """Check, then start the real components (Ray actors, vLLM, learners, reward models) and return
    the ``Trainer`` driving them. Everything started is stopped again if a later step fails."""
    checked = preflight(cfg)  # before the heavy imports too: a mistake is reported in seconds
    on_close = [checked.rewards.close]
    try:
        import ray
        from transformers import AutoTokenizer

        from or1.placement import check_cluster, start_workers

        connect_ray(cfg)
        check_cluster(checked.plan, ray.nodes())  # before anything heavy: say what is missing, do not hang
        if checked.create_tiny_model:
            create_tiny_model(cfg)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        if checked.resume_from is not None and checked.create_tiny_model:
            check_resume_compatible(checked.resume_from, cfg)  # the model did not exist at preflight
        d = cfg.data
        train_data = PromptDataset.from_rows(checked.train_rows, tokenizer, d.max_prompt_length,
                                             d.apply_chat_template, "data.train_files")
        val_data = (PromptDataset.from_rows(checked.val_rows, tokenizer, d.max_prompt_length,
                                            d.apply_chat_template, "data.val_files") if checked.val_rows else None)
        write_data_report(Path(cfg.trainer.output_dir) / "data_report.json",
                          {"train": train_data.report, "val": val_data.report if val_data else None})
        marker = write_shared_fs_marker(cfg.trainer.output_dir)
        on_close.append(lambda: marker.unlink(missing_ok=True))
        t0 = time.time()
        workers = start_workers(cfg, checked.plan, shared_fs_marker=str(marker))
        on_close.insert(0, workers.remove)
        checked.rewards.start_reward_models()
        ray.get([a.ready.remote() for a in workers.rollouts.actors]
                + [a.__ray_ready__.remote() for a in workers.learners.actors])
        log.info("actors ready in %.1fs: %d vLLM engine(s), %d %s learner rank(s), placement %s",
                 time.time() - t0, len(workers.rollouts.actors), workers.learners.world_size, cfg.learner.backend,
                 checked.plan.mode)
        parts = Components(workers.learners, workers.rollouts, checked.rewards, tokenizer, train_data, val_data,
                           sleep_rollouts=checked.plan.mode == Placement.colocated, on_close=on_close)
        return Trainer(cfg, parts, resume_from=checked.resume_from)
    except BaseException:
        for close in on_close:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - the original error is what matters
                log.warning("cleaning up after a failed start: %r", exc)
        raise


# --- the individual checks ---------------------------------------------------------------------
def _inside_output_dir(cfg: OR1Config, path: str) -> bool:
    return Path(path).resolve().is_relative_to(Path(cfg.trainer.output_dir).resolve())


def write_tiny_data(cfg: OR1Config) -> None:
    """The tiny recipe's arithmetic data: written where missing, only inside ``trainer.output_dir``
    (a data path elsewhere must exist, like in any recipe)."""
    from or1.data.arithmetic import as_code_problem, generate_splits, write_jsonl

    t = cfg.tiny
    missing = [f for f in cfg.data.train_files + cfg.data.val_files
               if not os.path.exists(f) and _inside_output_dir(cfg, f)]
    if not missing:
        return
    train, val = generate_splits(t.n_train, t.n_val, max_operand=t.max_operand, seed=t.seed)
    if t.task == TinyTask.code:
        train, val = [as_code_problem(r) for r in train], [as_code_problem(r) for r in val]
    for files, rows in ((cfg.data.train_files, train), (cfg.data.val_files, val)):
        for f in files:
            if f in missing:
                write_jsonl(rows, f)


def read_data(cfg: OR1Config, with_val: bool = True) -> tuple[DataRows, DataRows | None]:
    """The training (and validation) rows, checked (``or1.data.rows.load_rows``); message prompts
    without the chat template are refused here, before anything starts."""
    d = cfg.data
    train = load_rows(d, d.train_files, "data.train_files")
    val = load_rows(d, d.val_files, "data.val_files") if d.val_files and with_val else None
    for name, split in (("data.train_files", train), ("data.val_files", val)):
        if split is None or d.apply_chat_template:
            continue
        chat = next((ref for row, ref in zip(split.rows, split.refs) if not isinstance(row["prompt"], str)), None)
        if chat is not None:
            raise DataError(f"{name}: {chat} has a prompt of chat messages but data.apply_chat_template=false; set "
                            "it to true (messages are rendered with the chat template)")
    return train, val


def run_on_engines(cfg: OR1Config, read_rows: Callable[[], DataRows], field_name: str, run_dir: str,
                   work: Callable[..., T]) -> T:
    """The commands that sample a given model without training it (``or1.data.filter``, ``or1.eval``):
    the engines-only plan, ``read_rows()``, the model path, the Ray address, the rewards tried on a
    real row, the tokenized prompts; then ``work(data, engines, rewards, tokenizer)`` with vLLM
    engines that start at the first ``generate`` (none if nothing is sampled). Stops what it started."""
    from transformers import AutoTokenizer

    from or1.placement import LazyEngines, plan_engines_only

    try:
        plan = plan_engines_only(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    rows = read_rows()
    check_model_path(cfg)
    check_ray_address(cfg.trainer.ray_address)
    rewards = RewardManager(cfg.reward, run_dir=run_dir)
    engines = LazyEngines(cfg, plan, on_start=rewards.start_reward_models)  # reward models are Ray actors too
    try:
        rewards.check_on_rows(rows.rows, rows.where)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        data = PromptDataset.from_rows(rows, tokenizer, cfg.data.max_prompt_length, cfg.data.apply_chat_template,
                                       field_name)
        return work(data, engines, rewards, tokenizer)
    finally:
        engines.close()
        rewards.close()


def create_tiny_model(cfg: OR1Config) -> None:
    """The tiny recipe's model, warmed up on its arithmetic data (minutes on 2 cores)."""
    from or1.data.arithmetic import generate_splits
    from or1.tiny import TinySpec, create_tiny_model as create

    t = cfg.tiny
    train, _ = generate_splits(t.n_train, t.n_val, max_operand=t.max_operand, seed=t.seed)
    log.info("creating the tiny model at %s (%d warm-up steps)", cfg.model.path, t.warmup_steps)
    create(cfg.model.path, TinySpec(hidden_size=t.hidden_size, num_layers=t.num_layers, seed=t.seed),
           warmup_steps=t.warmup_steps, warmup_rows=train, warmup_lr=t.warmup_lr, label_noise=t.label_noise,
           log_every=max(1, t.warmup_steps // 10))  # ten progress lines with an ETA: minutes on a loaded machine


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith(("/", ".", "~")) and not path.endswith("/")


def make_paths_absolute(cfg: OR1Config) -> None:
    """Resolve ``trainer.output_dir``, ``trainer.init_from``, a ``trainer.resume`` path and a local
    ``model.path`` on the driver: a relative path would resolve against each node's own Ray working
    directory, so ranks on other nodes would write their shards elsewhere."""
    t = cfg.trainer
    t.output_dir = os.path.abspath(t.output_dir)
    if t.init_from:
        t.init_from = os.path.abspath(t.init_from)
    if t.resume not in ("auto", "off"):
        t.resume = os.path.abspath(t.resume)
    if Path(cfg.model.path).exists() or not _looks_like_hub_id(cfg.model.path):
        cfg.model.path = os.path.abspath(os.path.expanduser(cfg.model.path))


# The versions or1 is tested against: it calls vLLM internals (the layerwise reload_weights, sleep
# tags, the Ray executor's environment variables) that change between minor releases.
TESTED_VERSIONS = {"vllm": "0.32.0", "ray": "2.60.0"}


def check_stack_versions() -> list[str]:
    """Warn (once, at start-up) when an installed vLLM or Ray is not the tested version."""
    from importlib.metadata import PackageNotFoundError, version

    warnings = []
    for package, tested in TESTED_VERSIONS.items():
        installed = None
        for distribution in (package, f"{package}-cpu"):
            try:
                installed = version(distribution)
                break
            except PackageNotFoundError:
                continue
        if installed is not None and installed.split("+")[0] != tested:
            warnings.append(f"{package} {installed} is installed; or1 is tested with {package}=={tested} (it uses "
                            f"{package} internals that change between releases): install {package}=={tested}")
    for w in warnings:
        log.warning("%s", w)
    return warnings


def write_shared_fs_marker(output_dir: str) -> Path:
    """A fresh file in ``output_dir`` that every learner rank must see (``Learner`` checks it first)."""
    import uuid

    marker = Path(output_dir) / f".or1-shared-fs-{uuid.uuid4().hex[:12]}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by the or1 driver; every learner rank must see this file\n")
    return marker


def check_model_path(cfg: OR1Config) -> None:
    """``model.path`` is a local Hugging Face model directory, or an ``org/name`` hub id that is in the
    local cache or known to the hub. Raises ``StartupError`` naming the path otherwise."""
    path = cfg.model.path
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise StartupError(f"model.path={path!r} is not a Hugging Face model directory (it has no config.json)")
        return
    where = "" if local.is_absolute() else f" (relative to {Path.cwd()})"
    if not _looks_like_hub_id(path):
        hint = (" The tiny bootstrap (tiny.enabled) creates its model only inside trainer.output_dir="
                f"{cfg.trainer.output_dir!r}." if cfg.tiny.enabled else "")
        raise StartupError(f"model.path={path!r} does not exist{where}.{hint}")
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return  # in the local Hugging Face cache
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "")
    if offline:
        raise StartupError(f"model.path={path!r} is neither a local directory{where} nor in the Hugging Face cache, "
                           "and the hub is off (HF_HUB_OFFLINE)")
    try:
        HfApi().model_info(path, timeout=10)
    except RepositoryNotFoundError:
        raise StartupError(f"model.path={path!r} is neither a local directory{where} nor a model on the "
                           "Hugging Face hub") from None
    except Exception as exc:  # noqa: BLE001 - no network, a proxy, an expired token: say what happened
        raise StartupError(f"model.path={path!r} is not a local directory{where}, not in the Hugging Face cache, "
                           f"and the hub could not be asked ({type(exc).__name__}: {exc}); download the model "
                           "first or point model.path at a local directory") from None


def resolve_resume_target(cfg: OR1Config) -> Path | None:
    """The checkpoint this run starts from (``trainer.resume``, else ``trainer.init_from``), or None."""
    t = cfg.trainer
    try:
        found = resolve_resume(t.resume, t.output_dir)
        if found is None and t.init_from and t.resume != "off":
            found = resolve_resume(t.init_from, t.output_dir)
    except FileNotFoundError as exc:
        raise StartupError(str(exc)) from None
    return found


def check_ray_address(address: str | None) -> None:
    """An explicit ``host:port`` must answer before Ray is asked: ``ray.init`` waits forever on an
    address nobody listens on. ``auto`` fails fast in Ray itself; None starts a local Ray."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise StartupError(f"trainer.ray_address={address!r} must be auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise StartupError(f"trainer.ray_address={address!r}: nothing answers there ({exc}). Start the cluster "
                           "(`ray start --head` on the head node) or set trainer.ray_address=null to start a "
                           "local Ray") from None


def connect_ray(cfg: OR1Config) -> None:
    """Join the cluster at ``trainer.ray_address``, or start a new local Ray (never an existing one by
    accident: ``address="local"``)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.trainer.ray_address
    if not cfg.trainer.verbose:
        for handler in logging.getLogger("ray").handlers:
            handler.addFilter(_drop_ray_notices)
    try:
        ray.init(address=address or "local", num_cpus=None if address else cfg.trainer.ray_num_cpus,
                 include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": worker_environment(cfg)})
    except ConnectionError as e:
        raise StartupError(f"trainer.ray_address={address!r}: no running Ray cluster reachable ({e}). Start one "
                           "(`ray start --head` here, `ray start --address=HEAD:6379` on the other nodes) or set "
                           "trainer.ray_address=null to start a local Ray") from None


def worker_environment(cfg: OR1Config) -> dict[str, str]:
    """Environment of the run's Ray workers: third-party notices repeated by every actor (vLLM's
    platform and kernel notices, torch's C++ and Python deprecation warnings, DeepSpeed's
    accelerator guess) are off unless ``trainer.verbose``. Variables set by the user win."""
    env = {"VLLM_LOGGING_LEVEL": cfg.rollout.vllm_log_level or ("WARNING" if cfg.trainer.verbose else "ERROR")}
    if not cfg.trainer.verbose:
        env.update({"PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning",
                    "TORCH_CPP_LOG_LEVEL": "ERROR"})
        if cfg.trainer.gpus_per_node == 0:
            env["DS_ACCELERATOR"] = "cpu"  # what DeepSpeed would guess, without saying so from every rank
    return {k: v for k, v in env.items() if k not in os.environ}


def quiet_third_party(cfg: OR1Config) -> None:
    """The same environment for this process and its children (reward workers, a local Ray): the
    driver imports DeepSpeed too, and local Ray workers inherit it."""
    os.environ.update(worker_environment(cfg))


RAY_NOTICES = ("Token authentication is enabled",)


def _drop_ray_notices(record: logging.LogRecord) -> bool:
    return not any(n in record.getMessage() for n in RAY_NOTICES)


ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "vocab_size")


def check_resume_compatible(path: Path, cfg: OR1Config) -> None:
    """Refuse a checkpoint of another model, backend or (DeepSpeed) world size; log every other
    changed setting."""
    from transformers import AutoConfig

    for needed in ("hf/config.json", STATE_FILE, "config.yaml"):
        if not (path / needed).is_file():
            raise StartupError(f"checkpoint {path} is incomplete (no {needed}); point trainer.resume / "
                               "trainer.init_from at a complete one, or set trainer.resume=off")
    saved = json.loads((path / "hf" / "config.json").read_text())
    current = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code).to_dict()
    different = {k: (saved.get(k), current.get(k)) for k in ARCHITECTURE_KEYS if saved.get(k) != current.get(k)}
    if different:
        raise StartupError(f"checkpoint {path} is of another model than model.path={cfg.model.path!r}: "
                           + ", ".join(f"{k} {a} != {b}" for k, (a, b) in different.items()))
    state = json.loads((path / STATE_FILE).read_text())
    saved_backend, backend = state.get("learner_backend", "fsdp"), str(cfg.learner.backend)
    if saved_backend != backend:
        raise StartupError(f"checkpoint {path} was written by the {saved_backend} learner backend; this run uses "
                           f"learner.backend={backend}. Export it (`python -m or1.export {path} --out DIR`) and "
                           f"start from the exported model (model.path=DIR, trainer.resume=off)")
    saved_world, world = state.get("world_size", 1), cfg.learner.num_workers
    if saved_world != world:
        if cfg.learner.backend != LearnerBackend.fsdp:
            raise StartupError(f"checkpoint {path} was written by {saved_world} learner ranks; this run has {world}, "
                               f"and DeepSpeed checkpoints load only at the same world size (set "
                               f"learner.num_workers={saved_world}, or export it and start from the exported model)")
        log.info("resume: %d learner ranks load a checkpoint of %d (FSDP2 reshards on load)", world, saved_world)
    before = _flatten(OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=True))
    now = _flatten(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True))
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
