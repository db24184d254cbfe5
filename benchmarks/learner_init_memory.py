"""Peak host memory per learner rank while loading the model and while writing the final export.

Two learner ranks (gloo, one process each) on CPU load a random Qwen2 model of at least 1B
parameters from float32 safetensors, then write it out as a Hugging Face directory. Side by
side in one run, each case in fresh processes, for FSDP2 and DeepSpeed ZeRO-3:

- ``new``: or1's path (``Learner``): the model is built on the meta device (FSDP2) or under
  ZeRO-3's partitioned init, and each rank reads only its own shard from the safetensors
  (``or1/workers/model_init.py``); the export gathers one sync bucket at a time and rank 0 streams
  it into safetensors shards (``Learner.save_hf``).
- ``old``: the path or1 had until 2026-11-24, rebuilt here: ``from_pretrained`` of the whole model
  on every rank, moved to the device, then ``fully_shard`` (FSDP2), or ``from_pretrained`` under
  transformers' ``HfDeepSpeedConfig`` (ZeRO-3); the export gathers every full parameter on every
  rank and rank 0 calls ``save_pretrained``.

Peak memory is the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``
before each phase) above what it held before the phase, the larger of the two ranks, for:

- ``load``: building the model and reading its weights (what this comparison is about);
- ``init``: the whole learner construction. For FSDP2 it is the load (AdamW allocates its moments
  at the first step). DeepSpeed's ``initialize`` allocates ZeRO-3's optimizer state on top (AdamW
  moments, gradient partitions: about 4x the rank's partition, the steady-state training memory
  that the FSDP2 path reaches at its first step). The old DeepSpeed path runs without the engine
  (from the same code after the load, and two ranks of the old load plus the engine do not fit in
  this machine's 24 GiB): its load and export are measured.
- ``export``: the final Hugging Face export.

On a GPU the same layouts decide device memory: the old path put the whole model on every GPU.

    .venv/bin/python benchmarks/learner_init_memory.py   # writes benchmarks/results/learner_init_memory.json

Run nothing else meanwhile: two ranks of the old path hold about 2.5x the model each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.learner_phases import Peak, write_random_qwen2  # noqa: E402
from benchmarks.report import report  # noqa: E402

GiB = 2**30
# hidden, layers, heads, kv heads, intermediate, vocab (untied): 1.03B parameters, 3.85 GiB in float32
DEFAULT_SHAPE = (2048, 20, 16, 4, 5632, 32000)


# --- one rank of one case (a subprocess) ---------------------------------------------------------
def old_load(backend: str, model_dir: str, learner_cfg, optim_cfg):
    """(model, gather-all function) the way or1 built its learners before 2026-11-24 (DeepSpeed: the
    partitioned model, without the engine)."""
    import torch
    from transformers import AutoModelForCausalLM

    from or1.workers.backends import deepspeed_config

    if backend == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cpu")
        mesh = init_device_mesh("cpu", (2,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        torch.optim.AdamW(model.parameters(), lr=optim_cfg.lr)

        def gather_all():
            return {n: p.full_tensor().detach().cpu() for n, p in model.named_parameters()}
        return model, gather_all

    import deepspeed
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    deepspeed.init_distributed(dist_backend="gloo")
    config = deepspeed_config(optim_cfg, learner_cfg)
    keep = HfDeepSpeedConfig(config)  # noqa: F841 - from_pretrained partitions while this lives
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def gather_all():
        params = list(model.named_parameters())
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            return {n: p.data.detach().clone() for n, p in params}
    return model, gather_all


def run_rank(a) -> None:
    import torch
    import torch.distributed as dist

    # imported before the baseline in both paths: a fixed ~0.2 GiB per process, whatever the model size
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401
    if a.backend == "deepspeed":
        import deepspeed  # noqa: F401

    from or1.config import LearnerConfig, ModelConfig, OptimConfig
    from or1.workers.learner import Learner

    torch.set_num_threads(1)
    os.environ.update(RANK=str(a.rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(a.port))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=2)
    learner_cfg = LearnerConfig(backend=a.backend, num_workers=2, torch_threads=1, sync_bucket_mb=a.bucket_mb)
    optim_cfg = OptimConfig(lr=1e-6)
    out_dir = os.path.join(a.out, "export")
    t0 = time.perf_counter()
    loaded_gib = []
    if a.path == "new":
        from or1.workers import backends

        # the peak up to the moment the model is loaded (VmHWM only grows within the phase)
        def recording(build):
            def wrapper(*args, **kwargs):
                model = build(*args, **kwargs)
                loaded_gib.append(init.so_far_gib())
                return model
            return wrapper
        backends.build_fsdp_model = recording(backends.build_fsdp_model)
        backends.build_zero3_model = recording(backends.build_zero3_model)
        with Peak() as init:
            learner = Learner(ModelConfig(path=a.model), optim_cfg, None, learner_cfg, a.rank, 2, "127.0.0.1",
                              a.port)
        load_gib = loaded_gib[0]
        t1 = time.perf_counter()
        with Peak() as export:
            learner.save_hf(out_dir)
    else:
        with Peak() as init:
            model, gather_all = old_load(a.backend, a.model, learner_cfg, optim_cfg)
        load_gib = init.gib
        t1 = time.perf_counter()
        with Peak() as export:
            full = gather_all()
            if a.rank == 0:
                model.save_pretrained(out_dir, state_dict=full)
            del full
    dist.barrier()
    with open(os.path.join(a.out, f"rank{a.rank}.json"), "w") as f:
        json.dump({"load_gib": load_gib, "init_gib": init.gib, "export_gib": export.gib, "init_s": t1 - t0,
                   "export_s": time.perf_counter() - t1}, f)


# --- the driver ---------------------------------------------------------------------------------
def run_case(backend: str, path: str, model_dir: str, bucket_mb: float, work: str) -> dict:
    from or1.placement import free_port

    out = os.path.join(work, f"{backend}-{path}")
    os.makedirs(out, exist_ok=True)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--rank", str(r), "--port", str(port),
                               "--backend", backend, "--path", path, "--model", model_dir, "--out", out,
                               "--bucket-mb", str(bucket_mb)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{backend}/{path} failed:\n" + "\n".join(log[-3000:] for log in logs))
    ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    exported = sum(os.path.getsize(os.path.join(out, "export", f)) for f in os.listdir(os.path.join(out, "export"))
                   if f.endswith(".safetensors"))
    shutil.rmtree(out)
    return {**{key: max(r[key] for r in ranks) for key in ("load_gib", "init_gib", "export_gib", "init_s",
                                                            "export_s")},
            "exported_gib": exported / GiB}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "or1-bench-1b"),
                   help="where the random model is written (kept for the next run)")
    p.add_argument("--backends", nargs="+", default=["fsdp", "deepspeed"], choices=["fsdp", "deepspeed"])
    p.add_argument("--bucket-mb", type=float, default=512, help="learner.sync_bucket_mb for the new export")
    p.add_argument("--shape", default=",".join(map(str, DEFAULT_SHAPE)),
                   help="hidden,layers,heads,kv_heads,intermediate,vocab (default: 1.03B parameters)")
    p.add_argument("--json", default=None)
    # one rank of one case (internal)
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rank is not None:
        run_rank(a)
        return

    import torch

    shape = (*(int(x) for x in a.shape.split(",")), False)  # untied embeddings
    num_params = write_random_qwen2(a.model_dir, shape, torch.float32, reuse=True)
    model_gib = num_params * 4 / GiB
    row = {"model_params_b": num_params / 1e9, "model_gib": model_gib, "ranks": 2, "bucket_mb": a.bucket_mb}
    with tempfile.TemporaryDirectory() as work:
        for backend in a.backends:
            # the key names for FSDP2 (the default backend); DeepSpeed's carry its name
            prefix = "" if backend == "fsdp" else f"{backend}_"
            new = run_case(backend, "new", a.model_dir, a.bucket_mb, work)
            old = run_case(backend, "old", a.model_dir, a.bucket_mb, work)
            print(f"{backend}: new {new}\n{backend}: old {old}", file=sys.stderr, flush=True)
            row.update({
                f"{prefix}load_peak_gib_per_rank": new["load_gib"],
                f"{prefix}old_load_peak_gib_per_rank": old["load_gib"],
                f"{prefix}load_peak_x_model": new["load_gib"] / model_gib,
                f"{prefix}old_load_peak_x_model": old["load_gib"] / model_gib,
                f"{prefix}init_peak_gib_per_rank": new["init_gib"],
                f"{prefix}init_peak_x_model": new["init_gib"] / model_gib,
                # the old FSDP2 init was its load (AdamW is lazy); the old DeepSpeed one is not measured
                **({"old_init_peak_gib_per_rank": old["init_gib"]} if backend == "fsdp" else {}),
                f"{prefix}export_peak_gib_per_rank": new["export_gib"],
                f"{prefix}old_export_peak_gib_per_rank": old["export_gib"],
                f"{prefix}export_peak_x_model": new["export_gib"] / model_gib,
                f"{prefix}old_export_peak_x_model": old["export_gib"] / model_gib,

                f"{prefix}export_s_new_over_old": new["export_s"] / old["export_s"],
                f"{prefix}exported_gib": new["exported_gib"],
            })
    report(row, a.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       "learner_init_memory.json"))

if __name__ == "__main__":
    main()
