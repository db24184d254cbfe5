"""Reading checkpoints a slice at a time and writing them a bucket at a time (or1/workers/hf_io.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from or1.workers.hf_io import ModelDirWriter, SafetensorsCheckpoint, StreamingSafetensorsWriter


def test_slices_and_flat_ranges_read_exactly_what_they_name(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(7, 5, generator=g), "b": torch.randn(11, generator=g),
               "c": torch.randn(3, 4, 2, generator=g).to(torch.bfloat16)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ckpt = SafetensorsCheckpoint(tmp_path)
    assert sorted(ckpt.names()) == ["a", "b", "c"]
    assert ckpt.shape("c") == (3, 4, 2) and ckpt.dtype("c") == torch.bfloat16
    assert torch.equal(ckpt.read("a", (slice(2, 5),)), tensors["a"][2:5])  # rows of a shard
    assert torch.equal(ckpt.read("a", (slice(6, 7), slice(1, 3))), tensors["a"][6:7, 1:3])
    for start, end in ((0, 35), (3, 4), (4, 13), (33, 35)):  # ZeRO-3 partitions: any flat range
        assert torch.equal(ckpt.read_flat("a", start, end), tensors["a"].reshape(-1)[start:end]), (start, end)
    assert torch.equal(ckpt.read_flat("b", 2, 9), tensors["b"][2:9])
    assert torch.equal(ckpt.read_flat("c", 5, 19), tensors["c"].reshape(-1)[5:19])
    # into a shard's own memory: directly (same dtype, whole rows) or through a copy (another dtype)
    shard = torch.zeros(3, 5)
    ckpt.read_into("a", shard, (slice(4, 7),))
    assert torch.equal(shard, tensors["a"][4:7])
    wider = torch.zeros(3, 4, 2, dtype=torch.float32)
    ckpt.read_into("c", wider)
    assert torch.equal(wider, tensors["c"].float())
    partition = torch.zeros(10)
    ckpt.read_flat("a", 12, 19, into=partition[:7])
    assert torch.equal(partition[:7], tensors["a"].reshape(-1)[12:19]) and partition[7:].eq(0).all()
    with pytest.raises(ValueError, match="cannot hold rows 0:2"):
        ckpt.read_into("a", torch.zeros(3, 5), (slice(0, 2),))
    ckpt.close()


def test_streamed_shards_hold_the_planned_tensors(tmp_path):
    tensors = {f"t{i}": torch.full((i + 1, 4), float(i)) for i in range(5)}
    tensors["half"] = torch.arange(6, dtype=torch.bfloat16)
    plan = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = StreamingSafetensorsWriter(tmp_path, plan, max_shard_bytes=40)  # 40 bytes: several files
    names = list(tensors)
    writer.add({n: tensors[n] for n in names[:2]})  # buckets of any size, in the plan's order
    writer.add({n: tensors[n] for n in names[2:]})
    files = writer.close()
    assert len(files) > 2 and all(f.name.startswith("model-") for f in files)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    read = {}
    for f in files:
        read.update(load_file(str(f)))
    assert set(index["weight_map"]) == set(tensors) and all(torch.equal(read[n], tensors[n]) for n in tensors)
    with pytest.raises(ValueError, match="arrived where the plan has t0"):
        StreamingSafetensorsWriter(tmp_path / "x", plan).add({"t1": tensors["t1"]})
    unfinished = StreamingSafetensorsWriter(tmp_path / "y", plan)
    unfinished.add({"t0": tensors["t0"]})
    with pytest.raises(ValueError, match="5 planned tensors never arrived"):
        unfinished.close()


def test_a_streamed_model_directory_loads_in_transformers(tiny_model, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_model)
    params = dict(original.named_parameters())
    writer = ModelDirWriter(tmp_path / "out", [(n, tuple(p.shape), p.dtype) for n, p in params.items()],
                            max_shard_bytes=2**18)
    for name, p in params.items():
        writer.add({name: p.detach()})
    out = writer.finish([AutoConfig.from_pretrained(tiny_model)], tiny_model)
    assert not (tmp_path / "out.tmp").exists() and (out / "tokenizer.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(p, params[n]) for n, p in loaded.named_parameters())
