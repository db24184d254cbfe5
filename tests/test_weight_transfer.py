"""The weight buffer format: exact round trips, views without copies, a reused staging buffer."""

import numpy as np
import torch

from or1.workers.weight_transfer import WeightPacker, payload_nbytes, unpack_weights


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(7, 5, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(3, generator=g, dtype=torch.float64),
        "a.scalar": torch.tensor(3.5),
        "an.empty": torch.zeros(0, 4),
        "step.count": torch.tensor([1, 2, 3], dtype=torch.int64),
        "non.contiguous": torch.randn(4, 6, generator=g).t(),
    }


def test_round_trip_is_exact_for_every_dtype_and_shape():
    packer = WeightPacker()
    original = tensors(0)
    payload = packer.pack(original)
    assert isinstance(payload, np.ndarray) and payload.dtype == np.uint8
    for source in (payload, payload.tobytes(), bytearray(payload.tobytes())):
        back = unpack_weights(source)
        assert list(back) == list(original)
        for name, t in original.items():
            assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
            assert torch.equal(back[name], t), name
    assert payload_nbytes(back) == sum(t.numel() * t.element_size() for t in original.values())


def test_unpacked_tensors_view_the_buffer_without_copying():
    payload = WeightPacker().pack(tensors(1))
    back = unpack_weights(payload)
    address = back["model.embed_tokens.weight"].data_ptr()
    assert payload.ctypes.data <= address < payload.ctypes.data + payload.nbytes
    assert address % 64 == 0  # aligned: any dtype can be viewed in place


def test_the_staging_buffer_is_reused_and_grows():
    packer = WeightPacker()
    small = packer.pack({"x": torch.ones(4)})
    first = packer._staging.data_ptr()
    again = packer.pack({"x": torch.full((4,), 2.0)})
    assert packer._staging.data_ptr() == first  # same memory: the previous result is overwritten (documented)
    assert torch.equal(unpack_weights(again)["x"], torch.full((4,), 2.0))
    big = packer.pack({"y": torch.arange(10000.0)})
    assert torch.equal(unpack_weights(big)["y"], torch.arange(10000.0))
    del small
