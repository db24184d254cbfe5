"""Policy-gradient loss pieces, as pure tensor functions.

Shapes: ``[B, L]`` for per-token tensors (B sequences, L positions) with a float ``mask`` that is
1 on the response tokens that carry loss and 0 elsewhere (prompt, padding).
"""

from __future__ import annotations

import torch

from or1.config import KLEstimator, LossAgg


def token_log_probs_and_entropy(logits: torch.Tensor, input_ids: torch.Tensor,
                                with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each token given the tokens before it, and the full-vocabulary entropy there.

    Output position t holds log p(input_ids[t] | input_ids[<t]) computed from ``logits[t-1]``;
    position 0 has no prediction and holds 0. Entropy H_t = logsumexp(z) - sum softmax(z) * z.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    lse = torch.logsumexp(logits, dim=-1)
    logp = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - lse
    logp = torch.nn.functional.pad(logp, (1, 0))
    entropy = None
    if with_entropy:
        probs = torch.softmax(logits, dim=-1)
        entropy = torch.nn.functional.pad(lse - (probs * logits).sum(-1), (1, 0))
    return logp, entropy


def ppo_clip_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                  clip_low: float, clip_high: float, dual_clip: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate loss and a 0/1 tensor marking where clipping was active.

        rho = exp(logp - logp_old)
        loss = max(-A * rho, -A * clip(rho, 1 - clip_low, 1 + clip_high))
        dual clip (c > 1, only where A < 0):  loss = min(loss, -c * A)

    Asymmetric ``clip_low`` / ``clip_high`` is DAPO's clip-higher. The dual clip (Ye et al. 2020)
    bounds the loss of a negative-advantage token whose ratio exploded.
    ``advantages`` broadcasts against ``log_probs`` (pass ``[B, 1]`` for per-sequence values).
    """
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        cap = -dual_clip * advantages
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        was_clipped = was_clipped | dual
    return loss, was_clipped.float()


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: KLEstimator | str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs.

        k1 = logp - logp_ref
        k2 = (logp - logp_ref)^2 / 2
        k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1      (unbiased, low variance, >= 0)
    """
    diff = log_probs - ref_log_probs
    if estimator == KLEstimator.k1:
        return diff
    if estimator == KLEstimator.k2:
        return 0.5 * diff.square()
    if estimator == KLEstimator.k3:
        return torch.exp(-diff) + diff - 1.0
    raise ValueError(f"KL estimator must be one of {[e.value for e in KLEstimator]}, got {estimator!r}")


def masked_token_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def aggregate_loss(values: torch.Tensor, mask: torch.Tensor, mode: LossAgg | str, num_tokens: float | torch.Tensor,
                   num_seqs: float | torch.Tensor) -> torch.Tensor:
    """Reduce per-token values to the loss of one micro-batch, normalised for the *whole* batch.

    ``num_tokens`` / ``num_seqs`` count loss tokens / sequences over the whole optimizer batch
    (every micro-batch and rank), so the sum of the micro-batch results is the batch's value:

    - ``token_mean`` (OR1): sum_i sum_t v_it / num_tokens — every token weighs the same.
    - ``seq_mean_token_mean`` (original GRPO): sum_i [sum_t v_it / |y_i|] / num_seqs.
    - ``seq_mean_token_sum`` (Dr. GRPO-like): sum_i sum_t v_it / num_seqs.

    Sequences without loss tokens contribute 0; an empty batch gives 0, never NaN.
    """
    if mode == LossAgg.token_mean:
        return token_mean(values, mask, num_tokens)
    num_seqs = torch.clamp(torch.as_tensor(num_seqs, dtype=values.dtype), min=1.0)
    per_seq = (values * mask).sum(-1)
    if mode == LossAgg.seq_mean_token_mean:
        per_seq = per_seq / mask.sum(-1).clamp(min=1.0)
    elif mode != LossAgg.seq_mean_token_sum:
        raise ValueError(f"loss aggregation must be one of {[m.value for m in LossAgg]}, got {mode!r}")
    return per_seq.sum() / num_seqs


def token_mean(values: torch.Tensor, mask: torch.Tensor, num_tokens: float | torch.Tensor) -> torch.Tensor:
    """OR1's token-level aggregation: sum over the masked tokens / ``num_tokens``.

    ``num_tokens`` is the number of loss tokens in the *whole* batch (all micro-batches, all
    ranks), so summing this over micro-batches gives exactly the batch's token mean; there is
    no per-sequence 1/|y| normalisation. With ``num_tokens == 0`` (nothing to learn from) the
    result is 0, never NaN.
    """
    num_tokens = torch.as_tensor(num_tokens, dtype=values.dtype)
    return masked_token_sum(values, mask) / torch.clamp(num_tokens, min=1.0)


class TokenStatsHead(torch.nn.Module):
    """Stands in for a causal LM's ``lm_head``: returns ``[B, L, 2]`` (log-prob of each token, entropy
    there; the layout of ``token_log_probs_and_entropy``) instead of ``[B, L, vocab]`` logits.

    The logits are computed ``chunk_tokens`` positions at a time, each chunk under activation
    checkpointing, so neither the forward nor the backward pass ever holds more than one chunk
    of float32 logits: at 32K tokens and a 152K vocabulary the full tensor alone is ~19 GiB, its
    softmax and gradient twice that. The head keeps the original ``weight`` Parameter, so
    parameter names, weight tying and sharding are unchanged. ``targets`` (the batch's input ids)
    must be set before each forward.
    """

    def __init__(self, lm_head: torch.nn.Linear, chunk_tokens: int):
        super().__init__()
        self.weight = lm_head.weight
        self.bias = lm_head.bias
        self.chunk_tokens = chunk_tokens
        self.targets: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        if self.targets is None or self.targets.shape != hidden.shape[:2]:
            raise RuntimeError("TokenStatsHead.targets must hold the input ids of this forward")
        batch, length, width = hidden.shape
        flat_hidden = hidden[:, :-1].reshape(-1, width)
        flat_targets = self.targets[:, 1:].reshape(-1)
        parts = [checkpoint(_chunk_token_stats, flat_hidden[s:s + self.chunk_tokens],
                            flat_targets[s:s + self.chunk_tokens], self.weight, self.bias, use_reentrant=False)
                 for s in range(0, flat_hidden.shape[0], self.chunk_tokens)]
        stats = torch.cat(parts) if parts else flat_hidden.new_zeros((0, 2), dtype=torch.float32)
        return torch.nn.functional.pad(stats.view(batch, length - 1, 2), (0, 0, 1, 0))


def _chunk_token_stats(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    lse = torch.logsumexp(logits, dim=-1)
    logp = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return torch.stack([logp, entropy], dim=-1)
