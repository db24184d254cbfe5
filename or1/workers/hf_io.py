"""Hugging Face model weights, read and written a piece at a time.

A 32B model is 131 GB in float32: no process may hold it to load or save it. Here:

- ``SafetensorsCheckpoint`` reads a model directory's safetensors files tensor by tensor, and a
  tensor slice by slice (``read``: a box of rows/columns; ``read_flat``: a range of the row-major
  flattening), with ``preadv`` into the result (no memory map, so nothing beyond the rows read
  becomes resident). A learner rank reads exactly its shard.
- ``StreamingSafetensorsWriter`` writes planned tensors into safetensors shard files as they arrive
  (``model-00001-of-0000N.safetensors`` + ``model.safetensors.index.json``, Hugging Face's layout):
  every header is known in advance, so a save holds only the tensors in hand (one bucket).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterable

import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}
_TORCH_DTYPES = {code: dtype for dtype, code in _SAFETENSORS_DTYPES.items()}


def local_model_dir(path: str, trust_remote_code: bool = False) -> Path:
    """The directory holding ``path``'s files: ``path`` itself, or a hub name's local snapshot
    (downloaded once into the Hugging Face cache if missing)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]
                                  if trust_remote_code else ["*.json", "*.safetensors", "*.model", "*.txt"]))


class SafetensorsCheckpoint:
    """The tensors of a Hugging Face checkpoint (one ``model.safetensors`` or an index of shards).

    Read with our own header parse and ``os.preadv`` straight into the result's memory: the
    ``safetensors`` library's pread backend ran at ~0.3 GB/s here (a 1B model took 12 s per rank),
    and its default memory map makes every page a slice touches resident.
    """

    _READ_CHUNK = 1 << 30  # bytes per preadv call (Linux caps one read just below 2 GiB)

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        index = self.dir / SAFETENSORS_INDEX
        if index.is_file():
            files = sorted({self.dir / f for f in json.loads(index.read_text())["weight_map"].values()})
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{self.dir} has no *.safetensors weights (or1 loads safetensors checkpoints; "
                                        "convert a .bin checkpoint with transformers' save_pretrained first)")
        # name -> (file, dtype, shape, absolute byte offset of the data)
        self._entries: dict[str, tuple[Path, torch.dtype, tuple[int, ...], int]] = {}
        for f in files:
            with open(f, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if meta["dtype"] not in _TORCH_DTYPES:
                    raise ValueError(f"{f}: tensor {name} has dtype {meta['dtype']}, which or1 does not load "
                                     f"(known: {sorted(_TORCH_DTYPES)})")
                self._entries[name] = (f, _TORCH_DTYPES[meta["dtype"]], tuple(meta["shape"]),
                                           8 + size + meta["data_offsets"][0])
        self._fds: dict[Path, int] = {}

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][2]

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name][1]

    def _read_elements(self, name: str, start: int, end: int, into: torch.Tensor | None = None) -> torch.Tensor:
        """Elements ``start:end`` of the tensor's row-major flattening (contiguous bytes in the file),
        read straight into ``into`` (a contiguous CPU tensor of the file's dtype) or a new 1-D tensor."""
        path, dtype, _, offset = self._entries[name]
        out = torch.empty(end - start, dtype=dtype) if into is None else into
        if out.numel():
            view, done, fd = memoryview(out.detach().reshape(-1).view(torch.uint8).numpy()), 0, self._fd(path)
            first_byte = offset + start * dtype.itemsize
            while done < len(view):
                n = os.preadv(fd, [view[done:done + self._READ_CHUNK]], first_byte + done)
                if n <= 0:
                    raise OSError(f"{path} ended early while reading {name} (truncated checkpoint?)")
                done += n
        return out

    def _row_range(self, name: str, box: tuple[slice, ...] | None) -> tuple[int, int, int]:
        shape = self.shape(name)
        row = math.prod(shape[1:])
        first, last, _ = box[0].indices(shape[0]) if box else (0, shape[0], 1)
        return first, max(first, last), row

    def read(self, name: str, box: tuple[slice, ...] | None = None) -> torch.Tensor:
        """The tensor ``name``, or only the part ``box`` selects (one slice per leading dimension;
        the rows it spans are read, the other dimensions cut in memory)."""
        shape = self.shape(name)
        if not shape:
            return self._read_elements(name, 0, 1).reshape(())
        first, last, row = self._row_range(name, box)
        part = self._read_elements(name, first * row, last * row).reshape(last - first, *shape[1:])
        return part[(slice(None), *box[1:])] if box and len(box) > 1 else part

    def read_into(self, name: str, out: torch.Tensor, box: tuple[slice, ...] | None = None) -> None:
        """``out.copy_(read(name, box))``, but straight from the file into ``out``'s memory (no second
        copy, no temporary) when ``out`` is a contiguous CPU tensor of the file's dtype and ``box``
        selects whole rows (an FSDP2 shard)."""
        shape = self.shape(name)
        direct = (out.device.type == "cpu" and out.is_contiguous() and out.dtype == self.dtype(name) and shape
                  and (not box or all(s == slice(None) or s.indices(n) == (0, n, 1)
                                      for s, n in zip(box[1:], shape[1:]))))
        if not direct:
            out.copy_(self.read(name, box))
            return
        first, last, row = self._row_range(name, box)
        if out.numel() != (last - first) * row:
            raise ValueError(f"{name}: {tuple(out.shape)} cannot hold rows {first}:{last} of {shape}")
        self._read_elements(name, first * row, last * row, into=out)

    def read_flat(self, name: str, start: int, end: int, into: torch.Tensor | None = None) -> torch.Tensor:
        """Elements ``start:end`` of the tensor's row-major flattening (a ZeRO-3 partition), into
        ``into`` when given (a contiguous CPU tensor of the file's dtype; else copied into it)."""
        if into is not None and not (into.device.type == "cpu" and into.is_contiguous()
                                     and into.dtype == self.dtype(name)):
            into.copy_(self._read_elements(name, start, end))
            return into
        return self._read_elements(name, start, end, into)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class StreamingSafetensorsWriter:
    """Writes a planned list of tensors into safetensors shard files, each tensor's bytes as it arrives.

    The plan (``(name, shape, dtype)`` in arrival order) fixes every file's header up front, so a
    file of any size is written while holding only the tensors handed to ``add`` (one bucket), not
    the file's contents. Files: ``model.safetensors`` when one suffices, else
    ``model-0000k-of-0000N.safetensors`` and ``model.safetensors.index.json`` (Hugging Face's layout).
    """

    def __init__(self, out_dir: str | Path, plan: list[tuple[str, tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int = 5 * 2**30):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: list[list[tuple[str, tuple[int, ...], torch.dtype, int]]] = [[]]
        size = 0
        for name, shape, dtype in plan:
            nbytes = math.prod(shape) * dtype.itemsize
            if self.files[-1] and size + nbytes > max_shard_bytes:
                self.files.append([])
                size = 0
            self.files[-1].append((name, tuple(shape), dtype, nbytes))
            size += nbytes
        count = len(self.files)
        self.names = ["model.safetensors"] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors"
                                                               for i in range(count)]
        self._order = [(f, entry) for f, entries in enumerate(self.files) for entry in entries]
        self._next = 0
        self._handle = None
        self._file = -1
        self.total_bytes = sum(e[3] for _, e in self._order)

    def _open(self, f: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype, nbytes in self.files[f]:
            header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self._handle = open(self.dir / (self.names[f] + ".tmp"), "wb")
        self._handle.write(len(raw).to_bytes(8, "little") + raw)
        self._file = f

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write these tensors; they must come in the plan's order (any grouping into calls)."""
        for name, tensor in tensors.items():
            f, (expected, shape, dtype, _) = self._order[self._next]
            if name != expected or tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(f"tensor {name} {tuple(tensor.shape)} {tensor.dtype} arrived where the plan has "
                                 f"{expected} {shape} {dtype}")
            if f != self._file:
                self._open(f)
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            self._handle.write(data.view(torch.uint8).numpy().data if data.numel() else b"")
            self._next += 1

    def close(self) -> list[Path]:
        if self._next != len(self._order):
            missing = [e[0] for _, e in self._order[self._next:self._next + 5]]
            raise ValueError(f"{len(self._order) - self._next} planned tensors never arrived: {missing} ...")
        if self._handle is not None:
            self._handle.close()
        for name in self.names:
            os.replace(self.dir / (name + ".tmp"), self.dir / name)
        if len(self.names) > 1:
            weight_map = {entry[0]: self.names[f] for f, entry in self._order}
            (self.dir / SAFETENSORS_INDEX).write_text(json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, indent=2, sort_keys=True))
        return [self.dir / n for n in self.names]


class ModelDirWriter:
    """A Hugging Face model directory written as its planned tensors arrive (``add``), then
    ``finish``-ed with the configuration and tokenizer. It is built under a temporary name and
    renamed, so ``out`` is never half written; only the tensors passed to ``add`` are held."""

    def __init__(self, out: str | Path, plan: list[tuple[str, tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int = 5 * 2**30):
        self.out = Path(out)
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.weights = StreamingSafetensorsWriter(self.tmp, plan, max_shard_bytes)

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        self.weights.add(tensors)

    def finish(self, configs: Iterable, tokenizer_path: str | Path | None) -> Path:
        """``configs``: objects with ``save_pretrained(dir)`` (the model's config, its generation config)."""
        from transformers import AutoTokenizer

        self.weights.close()
        for config in configs:
            if config is not None:
                config.save_pretrained(self.tmp)
        if tokenizer_path:
            AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(self.tmp)
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out
