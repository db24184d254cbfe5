"""``python -m or1.export SRC --out DIR``: a policy as a Hugging Face model directory.

SRC is a checkpoint directory (``.../checkpoints/step_00000100``), a run's output directory (its
latest complete checkpoint), or a Hugging Face model directory such as a run's ``final/``
(re-written, e.g. to change ``--dtype``). Checkpoints of both learner backends are read in this
one process, without a process group, and streamed: a bucket of whole layers (``--bucket-mb``) is
read, written into safetensors shards and released before the next, so the export's own memory is
one bucket, never the model (FSDP2: torch distributed checkpoint reads only the requested tensors;
DeepSpeed ZeRO-3: every rank's float32 partition file is memory-mapped and each parameter is
reassembled from its partitions; a Hugging Face directory: tensor by tensor). The result loads in
transformers and vLLM.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

import torch

from or1.checkpoint import CHECKPOINTS, STATE_FILE, CheckpointDirs


class ExportError(ValueError):
    """SRC is not something that can be exported; the message says what it is and what is expected."""


def find_checkpoint(src: Path) -> Path:
    """The checkpoint directory ``src`` names: itself, or a run directory's latest complete one."""
    if (src / STATE_FILE).is_file() and (src / "learner").is_dir():
        return src
    if (src / CHECKPOINTS).is_dir():
        latest = CheckpointDirs(src).latest()
        if latest is None:
            raise ExportError(f"{src} has a {CHECKPOINTS}/ directory but no complete checkpoint in it "
                              "(a run killed before its first save leaves only *.tmp directories)")
        return latest
    if not src.exists():
        raise ExportError(f"{src} does not exist")
    raise ExportError(f"{src} is neither a checkpoint (<run>/{CHECKPOINTS}/step_N, with {STATE_FILE} and learner/), "
                      f"a run directory with {CHECKPOINTS}/, nor a Hugging Face model directory (config.json)")


def is_hf_model_dir(src: Path) -> bool:
    return (src / "config.json").is_file() and not (src / "learner").exists()


def export_checkpoint(src: str | Path, out: str | Path, dtype: str | None = None, bucket_mb: float = 1024,
                      max_shard_gib: float = 5.0) -> Path:
    """Write SRC's policy to ``out`` (see the module docstring); returns ``out``."""
    from transformers import AutoConfig, GenerationConfig

    from or1.workers.backends import torch_dtype, weight_buckets
    from or1.workers.hf_io import ModelDirWriter

    src = Path(src)
    if is_hf_model_dir(src):  # e.g. a run's final/
        hf_dir, reader = src, _HFReader(src)
    else:
        path = find_checkpoint(src)
        hf_dir = path / "hf"
        if not (hf_dir / "config.json").is_file():
            raise ExportError(f"checkpoint {path} has no hf/config.json (the model's configuration); it is incomplete")
        backend = json.loads((path / STATE_FILE).read_text()).get("learner_backend", "fsdp")
        reader = _Zero3Reader(path / "learner") if backend == "deepspeed" else _DCPReader(path / "learner", hf_dir)
    config = AutoConfig.from_pretrained(hf_dir)
    cast = torch_dtype(dtype) if dtype else None
    entries = reader.entries()  # (name, shape, dtype) in the source's order

    def out_dtype(source: torch.dtype) -> torch.dtype:
        return cast if cast is not None and source.is_floating_point else source

    buckets = weight_buckets([(n, shape) for n, shape, _ in entries], 4, int(bucket_mb * 2**20))
    dtypes = {n: out_dtype(d) for n, _, d in entries}
    shapes = {n: shape for n, shape, _ in entries}
    writer = ModelDirWriter(out, [(n, shapes[n], dtypes[n]) for names in buckets for n in names],
                            int(max_shard_gib * 2**30))
    for names in buckets:
        writer.add({n: t.to(dtypes[n]) for n, t in reader.read(names)})
    try:
        generation = GenerationConfig.from_pretrained(hf_dir)
    except OSError:
        generation = None
    if dtype:
        config.dtype = dtype
    return writer.finish([config, generation], hf_dir)


class _HFReader:
    """A Hugging Face directory's safetensors, tensor by tensor."""

    def __init__(self, model_dir: Path):
        from or1.workers.hf_io import SafetensorsCheckpoint

        self.checkpoint = SafetensorsCheckpoint(model_dir)

    def entries(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [(n, self.checkpoint.shape(n), self.checkpoint.dtype(n)) for n in self.checkpoint.names()]

    def read(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        for n in names:
            yield n, self.checkpoint.read(n)


class _DCPReader:
    """An FSDP2 checkpoint (torch distributed checkpoint): only the requested tensors are read."""

    def __init__(self, learner_dir: Path, hf_dir: Path):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.dir = learner_dir
        with torch.device("meta"):  # names, shapes and dtypes, no memory
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf_dir))
        self.meta = {n: p for n, p in model.named_parameters()}  # tied weights once

    def entries(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [(n, tuple(p.shape), p.dtype) for n, p in self.meta.items()]

    def read(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        import torch.distributed.checkpoint as dcp

        wanted = {n: torch.empty(self.meta[n].shape, dtype=self.meta[n].dtype) for n in names}
        dcp.load({"model": wanted}, checkpoint_id=str(self.dir), no_dist=True)
        yield from wanted.items()


class _Zero3Reader:
    """A DeepSpeed ZeRO checkpoint's float32 weights, one parameter at a time.

    ZeRO-3 keeps rank r's part of every parameter in its optimizer file's ``fp32_flat_groups``:
    parameters in order, each contributing ceil(numel / world) elements. The files are memory-mapped
    and each parameter is reassembled from the ranks' partitions when asked for (DeepSpeed's own
    ``GatheredTensor`` layout logic). ZeRO stages 0-2 keep the whole module in the model-states file.
    """

    def __init__(self, learner_dir: Path, tag: str = "state"):
        d = learner_dir / tag

        def rank_of(p: Path) -> int:
            return int(p.name.split("_rank_")[1].split("_")[0])

        model_files = sorted(d.glob("*_model_states.pt"), key=rank_of)
        optim_files = sorted(d.glob("*_optim_states.pt"), key=rank_of)
        if not model_files:
            raise ExportError(f"{d} holds no DeepSpeed checkpoint (no *_model_states.pt)")
        model_states = torch.load(model_files[0], map_location="cpu", weights_only=False, mmap=True)
        self.tied = set(model_states.get("shared_params", {}))
        optim = [torch.load(f, map_location="cpu", weights_only=False, mmap=True)["optimizer_state_dict"]
                 for f in optim_files]
        self.zero3 = bool(optim) and int(optim[0]["zero_stage"]) == 3
        if self.zero3:
            self.param_shapes = {n: s for group in model_states["param_shapes"] for n, s in group.items()}
            self.flat_groups = [o["fp32_flat_groups"] for o in optim]
            sizes = [g.numel() for g in self.flat_groups[0]]
            self.group_offsets = [0]
            for size in sizes:
                self.group_offsets.append(self.group_offsets[-1] + size)
            world = len(self.flat_groups)
            self.offsets, offset = {}, 0
            for name, shape in self.param_shapes.items():
                self.offsets[name] = offset
                offset += -(-shape.numel() // world)
        else:
            self.module = model_states["module"]

    def entries(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        if self.zero3:  # ZeRO keeps float32 master partitions
            return [(n, tuple(s), torch.float32) for n, s in self.param_shapes.items() if n not in self.tied]
        return [(n, tuple(t.shape), torch.float32 if t.is_floating_point() else t.dtype)
                for n, t in self.module.items() if n not in self.tied]

    def read(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        if not self.zero3:
            for n in names:
                t = self.module[n]
                yield n, t.float() if t.is_floating_point() else t
            return
        from deepspeed.utils.zero_to_fp32 import GatheredTensor

        world = len(self.flat_groups)
        for n in names:
            shape = self.param_shapes[n]
            part = -(-shape.numel() // world)
            yield n, GatheredTensor(self.flat_groups, self.group_offsets, self.offsets[n], part, shape).contiguous()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a checkpoint directory, a run's output directory, or a Hugging Face model directory")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the weights")
    p.add_argument("--bucket-mb", type=float, default=1024, help="weights read and written at a time")
    a = p.parse_args()
    try:
        print(f"wrote {export_checkpoint(a.src, a.out, a.dtype, a.bucket_mb)}")
    except ExportError as exc:
        print(f"or1.export: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
