"""Start-up checks (or1.startup.preflight): every recipe's start-up short of starting actors, and
every cheap mistake refused in seconds with a message naming the input."""

import json
import os
import shutil
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from or1.config import ModelConfig, register_configs
from or1.data.dataset import DataError
from or1.rewards.loader import RewardConfigError
from or1.rewards.manager import LocalSandbox, RewardManager
from or1.rewards.pool import RewardPool
from or1.startup import StartupError, check_model_path, check_ray_address, preflight
from or1.train import RECIPES_DIR

from .fakes import config as base_config

register_configs()
MATH, CODE = "or1.rewards.math:score", "or1.rewards.code:score"
RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))
TESTS = json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]})


@pytest.fixture(scope="module")
def pool():
    with RewardPool(num_workers=1, timeout_s=30, functions=[(MATH, {}), (CODE, {})]) as p:
        yield p


@pytest.fixture(scope="module")
def sandbox():
    service = LocalSandbox()
    yield service
    service.stop()


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def fake_checkpoint(run_dir, model_dir):
    """A checkpoint's metadata (no shards): enough for ``trainer.init_from`` to resolve and be checked."""
    step = os.path.join(run_dir, "checkpoints", "step_00000001")
    os.makedirs(os.path.join(step, "hf"), exist_ok=True)
    shutil.copy(os.path.join(model_dir, "config.json"), os.path.join(step, "hf", "config.json"))
    with open(os.path.join(step, "trainer_state.json"), "w") as f:
        json.dump({"step": 1, "learner_backend": "fsdp", "world_size": 1}, f)
    with open(os.path.join(step, "config.yaml"), "w") as f:
        f.write("{}\n")


def test_every_recipe_starts_up_short_of_the_actors(tmp_path, monkeypatch, tiny_model, pool, sandbox):
    """config -> placement plan -> data checks -> model path -> resume target -> reward manager
    (routes, sandbox) -> each term tried on a real row. The OR1 recipes crashed here before."""
    monkeypatch.chdir(tmp_path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    math_rows = [{"prompt": "1+2?", "answer": "3", "data_source": "math"}]
    for f in ("outputs/tiny_cpu/data/train.jsonl", "outputs/tiny_cpu/data/val.jsonl"):
        write_jsonl(f, math_rows)
    # the OR1 recipes read Skywork-OR1-RL-Data's layout (verl): messages, reward_model.ground_truth, ability
    def verl(content, truth, source, ability):
        return {"data_source": source, "prompt": [{"role": "user", "content": content}], "ability": ability,
                "reward_model": {"ground_truth": truth, "style": "rule"}}
    os.makedirs("data/or1")
    for f in ("math", "aime24", "aime25"):
        pq.write_table(pa.Table.from_pylist([verl("1+2?", '["3"]', "math-src", "math")]), f"data/or1/{f}.parquet")
    pq.write_table(pa.Table.from_pylist([verl("add", TESTS, "LeetCode", "code")]), "data/or1/code.parquet")
    shutil.copytree(tiny_model, "outputs/tiny_cpu/tiny_model")
    for name in RECIPES:
        fake_checkpoint(f"outputs/{name}", tiny_model)  # every stage's predecessor "ran"
    checked_recipes = []
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        for name in RECIPES:
            overrides = [f"recipe={name}", f"reward.sandbox.url={sandbox.url}"]
            if not name.startswith("tiny"):
                overrides.append(f"model.path={tiny_model}")  # the hub is out of reach here
            cfg = OmegaConf.to_object(compose(config_name=name, overrides=overrides))
            checked = preflight(cfg, reward_pool=pool)
            try:
                assert checked.train_rows.rows, name
                if name.startswith(("7b", "32b")):
                    assert [t.fn for t in checked.rewards.routes["code"]] == [CODE], name
                    code_rows = [r for r in checked.train_rows.rows if r.get("ability") == "code"]
                    assert code_rows and checked.rewards.terms_for(code_rows[0])[0].fn == CODE, name
                if "_stage" in name and not name.endswith("stage1"):
                    assert checked.resume_from is not None, name  # init_from resolved
            finally:
                checked.rewards.close()
            checked_recipes.append(name)
    assert {"7b_stage1", "7b_stage2", "32b_stage1", "32b_stage2", "math7b_stage1", "math7b_stage2", "math7b_stage3",
            "math7b_stage3_5", "tiny_cpu", "tiny_cpu_stage2"} <= set(checked_recipes)


def test_stage_recipes_follow_each_other():
    """Each stage starts where the previous one's output is, later and with a longer context."""
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        typed = {name: OmegaConf.to_object(compose(config_name=name, overrides=[f"recipe={name}"])) for name in RECIPES}
    for name, cfg in typed.items():
        if "_stage" in name and not name.endswith("stage1"):
            previous = typed[cfg.trainer.init_from.split("/")[-1]]
            assert cfg.trainer.total_steps > previous.trainer.total_steps, name
            assert cfg.rollout.max_response_length >= previous.rollout.max_response_length, name
            assert cfg.model.path == previous.model.path, name
    math7b = typed["math7b_stage1"]
    assert math7b.algorithm.mini_batch_groups * 2 == math7b.trainer.prompts_per_step


# --- each cheap mistake, refused in-process in seconds -------------------------------------------
def quick(tmp_path, **overrides):
    """A config whose data file and model directory exist (the model is a config.json: enough for the checks)."""
    data, model = tmp_path / "train.jsonl", tmp_path / "model"
    if not data.exists():
        write_jsonl(str(data), [{"prompt": "1+2", "answer": "3"}])
        model.mkdir()
        (model / "config.json").write_text("{}")
    return base_config(tmp_path, **{"data.train_files": [str(data)], "model.path": str(model), **overrides})


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer"\n', r"bad.jsonl line 2: invalid JSON"),
    ('{"prompt": "a"}\n\n{"question": "b"}\n',
     r"bad.jsonl line 1: no answer or tests\n  .*bad.jsonl line 3: no prompt"),
    ('{"prompt": ""}\n', r"bad.jsonl line 1: empty prompt"),
    ('["a", "b"]\n', r"bad.jsonl line 1: a JSON list, not an object"),
])
def test_bad_data_rows_are_named_by_file_and_line(tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(DataError, match=message):
        preflight(quick(tmp_path, **{"data.train_files": [str(bad)], "data.bad_rows": "error"}), reward_pool=object())


def test_message_prompts_without_the_chat_template_are_refused_before_anything_starts(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "1+2"}], "answer": "3"}) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:1 has a prompt of chat messages but data.apply_chat_template"):
        preflight(quick(tmp_path, **{"data.train_files": [str(data)], "data.apply_chat_template": False}),
                  reward_pool=object())


def test_a_missing_data_file_names_the_field_and_the_path(tmp_path):
    with pytest.raises(DataError, match=r"data.val_files: data file '/nowhere/val.jsonl' does not exist"):
        preflight(quick(tmp_path, **{"data.val_files": ["/nowhere/val.jsonl"]}), reward_pool=object())


def test_model_path_mistakes(tmp_path, monkeypatch, tiny_model):
    check_model_path(quick(tmp_path, **{"model.path": str(tiny_model)}))  # a model directory: fine
    with pytest.raises(StartupError, match=r"model.path='/no/such/model' does not exist\."):
        check_model_path(quick(tmp_path, **{"model.path": "/no/such/model"}))
    with pytest.raises(StartupError, match=r"model.path='outputs/x/model' does not exist \(relative to"):
        check_model_path(quick(tmp_path, **{"model.path": "outputs/x/model"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StartupError, match="is not a Hugging Face model directory"):
        check_model_path(quick(tmp_path, **{"model.path": str(tmp_path / "empty")}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StartupError, match=r"'someone/some-model' is neither a local directory .* nor in the "
                                           r"Hugging Face cache, and the hub is off"):
        check_model_path(quick(tmp_path, **{"model.path": "someone/some-model"}))


def test_the_tiny_bootstrap_creates_its_model_only_inside_the_output_dir(tmp_path):
    """A mistyped model.path used to become a new tiny model, silently."""
    inside = quick(tmp_path, **{"tiny.enabled": True, "model.path": str(tmp_path / "run" / "tiny_model")})
    checked = preflight(inside, reward_pool=None)
    checked.rewards.close()
    assert checked.create_tiny_model
    elsewhere = quick(tmp_path, **{"tiny.enabled": True, "model.path": str(tmp_path / "typo" / "tiny_modle")})
    with pytest.raises(StartupError, match="creates its model only inside trainer.output_dir"):
        preflight(elsewhere, reward_pool=object())


def test_a_bad_reward_function_is_refused_in_seconds(tmp_path):
    module = tmp_path / "rewards.py"
    module.write_text("def right(response, sample):\n    return 1.0\n")
    t0 = time.time()
    with pytest.raises(RewardConfigError, match=rf"reward.fn='{module}:nope': '{module}' has no callable named"):
        preflight(quick(tmp_path, **{"reward.fn": f"{module}:nope"}))
    assert time.time() - t0 < 30


def test_a_reward_that_returns_no_score_is_refused_naming_the_row(tmp_path):
    module = tmp_path / "words.py"
    module.write_text("def verdict(response, sample):\n    return 'correct'\n")
    with pytest.raises(RewardConfigError, match=r"reward term 'verdict' .* to row .*train.jsonl:1 returned an unusable "
                                                r"value: the reward must be a number, got str 'correct'"):
        preflight(quick(tmp_path, **{"reward.fn": f"{module}:verdict", "reward.num_workers": 1}))


def test_a_local_ray_is_always_a_new_one(tmp_path, monkeypatch):
    """With trainer.ray_address unset, or1 never joins a cluster that happens to run on the host."""
    import ray

    from or1.startup import connect_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    connect_ray(quick(tmp_path, **{"trainer.ray_num_cpus": 2}))
    connect_ray(quick(tmp_path, **{"trainer.ray_address": "auto"}))
    assert [(c["address"], c["num_cpus"]) for c in calls] == [("local", 2), ("auto", None)]


def test_an_unreachable_sandbox_is_refused_at_start(tmp_path, monkeypatch):
    from or1.rewards.code import URL_ENV

    monkeypatch.delenv(URL_ENV, raising=False)
    cfg = quick(tmp_path, **{"reward.fn": CODE, "reward.sandbox.url": "http://127.0.0.1:9"})
    with pytest.raises(RewardConfigError, match=r"the sandbox service at http://127.0.0.1:9 does not answer"):
        preflight(cfg)
    with pytest.raises(RewardConfigError, match="no sandbox service is configured"):
        RewardManager(quick(tmp_path, **{"reward.fn": CODE}).reward, pool=object())


def test_unreachable_ray_address_and_bad_resume_paths(tmp_path):
    t0 = time.time()
    with pytest.raises(StartupError, match=r"trainer.ray_address='127.0.0.1:9': nothing answers there"):
        check_ray_address("127.0.0.1:9")  # ray.init would wait forever
    assert time.time() - t0 < 10
    with pytest.raises(StartupError, match="must be auto, host:port"):
        check_ray_address("head-node")
    with pytest.raises(StartupError, match="is not a complete checkpoint"):
        preflight(quick(tmp_path, **{"trainer.resume": str(tmp_path / "nothing")}), reward_pool=object())


def a_checkpoint(tmp_path, tiny_model, cfg, hidden_size=128, backend="fsdp", world_size=1):
    """A checkpoint's metadata as or1 writes it (no shards: the checks read only these files)."""
    ckpt = tmp_path / "ckpt"
    (ckpt / "hf").mkdir(parents=True)
    model_config = json.loads((tiny_model / "config.json").read_text())
    (ckpt / "hf" / "config.json").write_text(json.dumps({**model_config, "hidden_size": hidden_size}))
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 3, "learner_backend": backend,
                                                         "world_size": world_size}))
    OmegaConf.save(OmegaConf.structured(cfg), ckpt / "config.yaml")
    return ckpt


@pytest.mark.parametrize("saved, overrides, message", [
    ({"hidden_size": 256}, {}, r"is of another model than model.path=.*hidden_size 256 != 128"),
    ({"backend": "deepspeed"}, {}, r"written by the deepspeed learner backend; this run uses learner.backend=fsdp"),
    ({"backend": "deepspeed", "world_size": 4}, {"learner.backend": "deepspeed"},
     r"written by 4 learner ranks; this run has 1, and DeepSpeed checkpoints load only at the same world size"),
])
def test_a_checkpoint_that_cannot_be_resumed_is_refused_before_start(tmp_path, tiny_model, saved, overrides, message):
    cfg = quick(tmp_path, **{"model.path": str(tiny_model), **overrides})
    ckpt = a_checkpoint(tmp_path, tiny_model, cfg, **saved)
    with pytest.raises(StartupError, match=message):
        preflight(quick(tmp_path, **{"model.path": str(tiny_model), "trainer.resume": str(ckpt), **overrides}),
                  reward_pool=object())


def test_a_compatible_checkpoint_logs_what_changed(tmp_path, tiny_model, caplog):
    cfg = quick(tmp_path, **{"model.path": str(tiny_model)})
    ckpt = a_checkpoint(tmp_path, tiny_model, cfg)
    with caplog.at_level("INFO", logger="or1"):
        checked = preflight(quick(tmp_path, **{"model.path": str(tiny_model), "trainer.resume": str(ckpt),
                                               "optim.lr": 0.5}))
    checked.rewards.close()
    assert checked.resume_from == ckpt
    assert "resume: optim.lr changed from 1e-06 to 0.5" in caplog.text


def test_a_learner_rank_that_cannot_see_the_output_dir_refuses_to_start(tmp_path, monkeypatch):
    """Multi-node runs need trainer.output_dir on a shared filesystem: each rank writes its own shards."""
    import torch.distributed

    from or1.startup import write_shared_fs_marker
    from or1.workers.learner import Learner, check_shared_filesystem

    def too_late(*args, **kwargs):
        raise AssertionError("the rank joined the process group before checking the shared filesystem")
    monkeypatch.setattr(torch.distributed, "init_process_group", too_late)

    marker = write_shared_fs_marker(str(tmp_path / "run"))
    check_shared_filesystem(str(marker), rank=0)  # the driver's own node sees it
    elsewhere = str(tmp_path / "not-shared" / marker.name)  # what a node with its own local disk would see
    with pytest.raises(RuntimeError, match=r"learner rank 3 on .* cannot see .*every node must share"):
        Learner(ModelConfig(path="/never/loaded"), rank=3, shared_fs_marker=elsewhere)


def test_relative_paths_are_resolved_on_the_driver(tmp_path, monkeypatch):
    from or1.startup import make_paths_absolute

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "local").mkdir(parents=True)  # exists: a local directory, not a hub name
    cfg = base_config(tmp_path, **{"trainer.output_dir": "outputs/run", "trainer.init_from": "outputs/stage1",
                                   "model.path": "models/local", "trainer.resume": "auto"})
    make_paths_absolute(cfg)
    assert cfg.trainer.output_dir == str(tmp_path / "outputs/run")
    assert cfg.trainer.init_from == str(tmp_path / "outputs/stage1")
    assert cfg.model.path == str(tmp_path / "models/local") and cfg.trainer.resume == "auto"
    hub = base_config(tmp_path, **{"model.path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"})
    make_paths_absolute(hub)
    assert hub.model.path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"  # a hub name stays a hub name


def test_an_untested_vllm_is_warned_about(monkeypatch, caplog):
    import importlib.metadata

    from or1.startup import check_stack_versions

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "0.33.1" if d == "vllm" else real(d))
    with caplog.at_level("WARNING", logger="or1"):
        warnings = check_stack_versions()
    assert any("vllm 0.33.1 is installed; or1 is tested with vllm==0.32.0" in w for w in warnings)


def test_worker_environment_is_quiet_unless_verbose_and_the_users_settings_win(tmp_path, monkeypatch):
    from or1.startup import _drop_ray_notices, worker_environment

    for name in ("VLLM_LOGGING_LEVEL", "PYTHONWARNINGS", "DS_ACCELERATOR", "TORCH_CPP_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)  # an earlier preflight in this process may have set them
    quiet = worker_environment(quick(tmp_path))
    assert quiet["VLLM_LOGGING_LEVEL"] == "ERROR" and "ignore::FutureWarning" in quiet["PYTHONWARNINGS"]
    assert quiet["DS_ACCELERATOR"] == "cpu" and quiet["TORCH_CPP_LOG_LEVEL"] == "ERROR"
    assert worker_environment(quick(tmp_path, **{"trainer.verbose": True})) == {"VLLM_LOGGING_LEVEL": "WARNING"}
    assert worker_environment(quick(tmp_path, **{"rollout.vllm_log_level": "INFO"}))["VLLM_LOGGING_LEVEL"] == "INFO"
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # set by the user: left alone
    assert "VLLM_LOGGING_LEVEL" not in worker_environment(quick(tmp_path))
    import logging

    notice = logging.LogRecord("ray", logging.WARNING, "", 0, "Token authentication is enabled for this Ray cluster.",
                               None, None)
    other = logging.LogRecord("ray", logging.WARNING, "", 0, "a real problem", None, None)
    assert not _drop_ray_notices(notice) and _drop_ray_notices(other)
