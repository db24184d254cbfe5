"""Policy-gradient loss pieces, as pure tensor functions.

Shapes: ``[B, L]`` for per-token tensors (B sequences, L positions) with a float ``mask`` that is
1 on the response tokens that carry loss and 0 elsewhere (prompt, padding).
"""

from __future__ import annotations

import torch


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
                  clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate loss and a 0/1 tensor marking where clipping was active.

        rho = exp(logp - logp_old)
        loss = max(-A * rho, -A * clip(rho, 1 - clip_low, 1 + clip_high))

    ``advantages`` broadcasts against ``log_probs`` (pass ``[B, 1]`` for per-sequence values).
    """
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    return loss, (clipped > unclipped).float()


def masked_token_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def token_mean(values: torch.Tensor, mask: torch.Tensor, num_tokens: float | torch.Tensor) -> torch.Tensor:
    """OR1's token-level aggregation: sum over the masked tokens / ``num_tokens``.

    ``num_tokens`` is the number of loss tokens in the *whole* batch (all micro-batches, all
    ranks), so summing this over micro-batches gives exactly the batch's token mean; there is
    no per-sequence 1/|y| normalisation. With ``num_tokens == 0`` (nothing to learn from) the
    result is 0, never NaN.
    """
    num_tokens = torch.as_tensor(num_tokens, dtype=values.dtype)
    return masked_token_sum(values, mask) / torch.clamp(num_tokens, min=1.0)
