"""The buffer in which weights travel from the learners into vLLM: one per bucket, never on disk.

Layout: an 8-byte little-endian header length ``H``; ``H`` bytes of JSON header, a list of
``[name, dtype, shape, offset, nbytes]``; then the tensors' raw bytes, each at ``offset`` from the
data start (64-byte aligned, so every tensor can be viewed in place on the receiving side).

Why not safetensors: its ``save`` copies every tensor twice on the host and ran at ~0.5 GB/s on
an H100 machine, the whole cost of a push (benchmarks/weight_sync.py). Here the learner copies
each tensor once, device to a pinned staging buffer (tens of GB/s), and the receiver views the
buffer without copying.
"""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import torch

_ALIGN = 64
_LEN = struct.Struct("<Q")


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class WeightPacker:
    """Packs named tensors into one uint8 buffer, reusing its staging memory between calls.

    On CUDA the staging buffer is pinned host memory, so device-to-host copies run at full link
    speed (a pageable copy measured ~1 GB/s). The returned array is a view of the staging buffer:
    valid until the next ``pack`` (Ray copies an actor method's result into its object store when
    the method returns).
    """

    def __init__(self):
        self._staging: torch.Tensor | None = None

    def pack(self, named: dict[str, torch.Tensor]) -> np.ndarray:
        entries, offset = [], 0
        for name, t in named.items():
            nbytes = t.numel() * t.element_size()
            entries.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, nbytes])
            offset = _aligned(offset + nbytes)
        header = json.dumps(entries).encode()
        data_start = _aligned(_LEN.size + len(header))
        total = data_start + offset
        on_cuda = any(t.is_cuda for t in named.values())
        if self._staging is None or self._staging.numel() < total or self._staging.is_pinned() != on_cuda:
            self._staging = torch.empty(total, dtype=torch.uint8, pin_memory=on_cuda)
        buf = self._staging[:total]
        buf[:_LEN.size] = torch.frombuffer(bytearray(_LEN.pack(len(header))), dtype=torch.uint8)
        buf[_LEN.size:_LEN.size + len(header)] = torch.frombuffer(bytearray(header), dtype=torch.uint8)
        for (_, _, _, off, nbytes), t in zip(entries, named.values()):
            if nbytes:
                start = data_start + off
                buf[start:start + nbytes].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8),
                                                non_blocking=on_cuda)
        if on_cuda:
            torch.cuda.synchronize()
        return buf.numpy()


def unpack_weights(payload) -> dict[str, torch.Tensor]:
    """Tensors viewing ``payload`` (bytes, bytearray, memoryview or a uint8 array) without copying."""
    view = memoryview(payload).cast("B")
    (header_len,) = _LEN.unpack_from(view, 0)
    entries = json.loads(bytes(view[_LEN.size:_LEN.size + header_len]))
    data_start = _aligned(_LEN.size + header_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only buffers: the tensors are only ever read (copied into vLLM)
        flat = torch.frombuffer(view, dtype=torch.uint8) if len(view) else torch.empty(0, dtype=torch.uint8)
    out = {}
    for name, dtype, shape, off, nbytes in entries:
        raw = flat[data_start + off:data_start + off + nbytes]
        out[name] = raw.view(getattr(torch, dtype)).reshape(shape)
    return out


def payload_nbytes(named: dict[str, torch.Tensor]) -> int:
    """Tensor bytes in a payload (what ``sync/bytes`` counts), headers and alignment excluded."""
    return sum(t.numel() * t.element_size() for t in named.values())
