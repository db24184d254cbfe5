"""Methods injected into every vLLM worker process (``LLM(worker_extension_cls=...)``).

vLLM runs the model in its own worker process(es); the rollout actor reaches them only through
``LLM.collective_rpc(method_name, ...)``. This class is mixed into vLLM's worker class there.
"""

from __future__ import annotations

import logging

import torch


class WeightSyncExtension:
    def or1_update_weights(self, payload, last: bool = True) -> int:
        """Load a packed set of Hugging Face-named tensors (``or1.workers.weight_transfer``) in place;
        returns the tensor bytes loaded.

        The set may be part of the model (a bucket of whole decoder layers): layers absent from it
        keep their current weights. ``last`` marks the final bucket of a push.

        Tensors travel as one flat buffer because ``collective_rpc``'s msgpack transport does not
        carry tensors nested in containers; a buffer passes through it unchanged.

        ``reload_weights`` (vLLM's layerwise in-place reload) is used rather than the model's
        ``load_weights``: on CPU, vLLM repacks linear weights into kernel layouts after loading
        (oneDNN / sgl), and a plain ``load_weights`` would leave the packed copies stale.
        """
        from or1.workers.weight_transfer import payload_nbytes, unpack_weights

        # Layers without checkpoint tensors of their own (rotary buffers, a tied LM head) make the
        # reload warn "Failed to load weights" on every push; they are expected, not failures.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        named_tensors = unpack_weights(payload)
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors.items()),
                                         is_checkpoint_format=True)
        if last:
            _repack_cpu_gemms_that_keep_weights(self.model_runner.get_model())
        return payload_nbytes(named_tensors)

    def or1_weight_checksum(self, names: list[str]) -> dict[str, float]:
        """Sum of each named parameter as vLLM holds it (for tests that weights arrived)."""
        params = dict(self.model_runner.get_model().named_parameters())
        return {n: float(params[n].double().sum()) for n in names if n in params}


def _repack_cpu_gemms_that_keep_weights(model: torch.nn.Module) -> None:
    """Rebuild vLLM's CPU GEMM handles for layers that keep their weight beside a packed copy.

    On CPU, vLLM packs the LM head (an embedding used as a GEMM) into a oneDNN/sgl handle but keeps
    the weight too. The in-place reload refreshes the weight and not that handle, so with tied
    embeddings the logits came from the old weights (measured: log-prob error 1.2 after a push;
    0 after this). Linear layers drop their weight after packing and are re-packed by the reload.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.ndim == 2 \
                and weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
