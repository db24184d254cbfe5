"""Attention for packed micro-batches: sequences back to back in one row, attending only within
themselves. Registered with transformers as ``VARLEN`` so a model's own attention layers call it.

The learner passes the boundaries as ``cu_seq_lens_q`` (``[sequences + 1]`` int32, cumulative
lengths) and ``max_length_q``; transformers hands every keyword of the model's forward down to
its attention function. Two kernels, one contract (causal attention inside each sequence):

- CUDA in bfloat16/float16: ``torch.nn.attention.varlen.varlen_attn``, torch's variable-length
  flash attention (no dependency beyond torch; forward and backward).
- Everywhere else (CPU; float32 on GPUs): causal ``scaled_dot_product_attention`` per sequence,
  sequences of equal length stacked into one call, so CPU runs and tests exercise the same layout
  as clusters.

``check_packed_attention`` proves at start-up that a model really routes its attention here: a
model whose layers bypass transformers' attention interface (some remote-code models) would
attend across sequence boundaries without any error.
"""

from __future__ import annotations

from typing import Callable

import torch

VARLEN = "or1_varlen"
_calls = 0  # attention calls since import; check_packed_attention counts them


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     sliding_window: int | None = None, cu_seq_lens_q: torch.Tensor | None = None,
                     max_length_q: int | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """``query`` ``[1, heads, tokens, head_dim]``, ``key`` / ``value`` ``[1, kv_heads, tokens, head_dim]``
    (transformers' layout); returns ``[1, tokens, heads, head_dim]`` and no attention weights."""
    global _calls
    _calls += 1
    if cu_seq_lens_q is None:
        raise RuntimeError(f"{VARLEN} attention needs the packed sequences' boundaries (cu_seq_lens_q): only "
                           "or1's learner calls models set to it")
    if query.shape[0] != 1:
        raise ValueError(f"packed micro-batches are one row; got {query.shape[0]} rows")
    if sliding_window is not None:
        raise NotImplementedError("sliding-window attention layers are not supported packed: set "
                                  "learner.padding_free=false")
    if dropout > 0.0:
        raise NotImplementedError(f"attention dropout ({dropout}) is not supported packed: set "
                                  "learner.padding_free=false or the model's attention_dropout to 0")
    gqa = key.shape[1] != query.shape[1]
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn

        cu = cu_seq_lens_q.to(device=query.device, dtype=torch.int32)
        longest = int(max_length_q) if max_length_q is not None else int((cu[1:] - cu[:-1]).max())
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [tokens, heads, head_dim]
        out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, window_size=(-1, 0),  # (-1, 0): causal
                          enable_gqa=gqa)
        return out.unsqueeze(0), None
    return _per_length_sdpa(query[0], key[0], value[0], cu_seq_lens_q, scaling, gqa).transpose(0, 1).unsqueeze(0), None


def _per_length_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_lens: torch.Tensor,
                     scaling: float | None, gqa: bool) -> torch.Tensor:
    """Causal attention inside each sequence, ``[heads, tokens, head_dim]`` in and out: sequences of
    equal length are stacked into one batched SDPA call (RL batches hold many responses of the same
    length: a few calls per layer instead of one per sequence)."""
    bounds = cu_seq_lens.tolist()
    by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            by_length.setdefault(end - start, []).append(start)
    parts, order = [], []
    for length, starts in by_length.items():
        index = (torch.tensor(starts)[:, None] + torch.arange(length)[None, :]).reshape(-1).to(query.device)

        def stacked(t: torch.Tensor) -> torch.Tensor:  # [heads, n * length, dim] -> [n, heads, length, dim]
            return t.index_select(1, index).view(t.shape[0], len(starts), length, t.shape[-1]).transpose(0, 1)

        out = torch.nn.functional.scaled_dot_product_attention(stacked(query), stacked(key), stacked(value),
                                                               is_causal=True, scale=scaling, enable_gqa=gqa)
        parts.append(out.transpose(0, 1).reshape(query.shape[0], -1, query.shape[-1]))
        order.append(index)
    inverse = torch.empty(query.shape[1], dtype=torch.long, device=query.device)
    inverse[torch.cat(order)] = torch.arange(query.shape[1], device=query.device)
    return torch.cat(parts, dim=1).index_select(1, inverse)


def _no_mask(*args, **kwargs) -> None:
    """The mask builder for VARLEN: the boundaries travel as cu_seq_lens_q, no mask tensor is needed."""
    return None


def register() -> None:
    """Make ``VARLEN`` a transformers attention implementation (idempotent, per process)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, _no_mask)


def use_varlen_attention(model: torch.nn.Module) -> None:
    """Switch a Hugging Face model (built, not yet wrapped) to packed attention."""
    register()
    model.set_attn_implementation(VARLEN)


def check_packed_attention(model: torch.nn.Module, num_layers: int, packed_forward: Callable[[], object]) -> None:
    """``packed_forward()`` (one packed forward of ``model``) must call ``varlen_attention`` once per
    decoder layer; fails with what to do when the model's attention ignores transformers' attention
    interface."""
    before = _calls
    with torch.no_grad():
        packed_forward()
    calls = _calls - before
    if calls != num_layers:
        name = type(getattr(model, "module", model)).__name__
        raise RuntimeError(
            f"{name} called or1's packed attention {calls} times for {num_layers} decoder layers: its attention "
            "layers do not go through transformers' attention interface, so packed sequences would attend to "
            "each other. Set learner.padding_free=false (padded micro-batches with an attention mask) for "
            "this model")
