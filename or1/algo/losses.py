"""Policy-gradient loss pieces, as pure tensor functions.

Per-token tensors are flat: ``[R]``, the response tokens of a micro-batch back to back (the
layout of ``or1.algo.packing.MicroBatch``); only response tokens carry loss, so there is no mask.
``token_sequence[j]`` says which sequence token j belongs to where a reduction needs it.
"""

from __future__ import annotations

import torch

from or1.config import KLEstimator, LossAgg


def token_log_probs_and_entropy(logits: torch.Tensor, targets: torch.Tensor,
                                with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target under its logits, and the full-vocabulary entropy there.

        logits [N, V] (the hidden state that predicts each target), targets [N]
        log p = z[target] - logsumexp(z)          H = logsumexp(z) - sum softmax(z) * z

    Computed in float32 whatever the logits' dtype.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    logp = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1) if with_entropy else None
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


def truncated_is_weights(learner_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """Per-token truncated importance weights for tokens sampled by another engine (TIS):

        w = min(exp(logp_learner - logp_rollout), cap)

    ``logp_learner``: the learner's log-probs of the tokens under the weights that generated them
    (the PPO ratio's denominator); ``logp_rollout``: the sampling engine's (vLLM's) for the same
    tokens. The two differ by numerics (kernels, bf16), so the sampled distribution is not quite
    the one the ratio assumes; weighting the surrogate by w corrects that, the cap bounding the
    variance. No gradient flows through w.
    """
    return torch.exp(learner_log_probs - rollout_log_probs).clamp(max=cap).detach()


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


def aggregate_loss(values: torch.Tensor, token_sequence: torch.Tensor, response_lengths: torch.Tensor,
                   mode: LossAgg | str, num_tokens: float | torch.Tensor,
                   num_seqs: float | torch.Tensor) -> torch.Tensor:
    """Reduce one micro-batch's per-token values (``[R]``) to its loss, normalised for the *whole* batch.

    ``num_tokens`` / ``num_seqs`` count loss tokens / sequences with at least one response token over
    the whole optimizer batch (every micro-batch and rank), so the sum of the micro-batch results is
    the batch's value. With y_i the response tokens of sequence i:

    - ``token_mean`` (OR1): sum_i sum_{t in y_i} v_it / num_tokens — every token weighs the same.
    - ``seq_mean_token_mean`` (original GRPO): sum_i [sum_t v_it / |y_i|] / num_seqs.
    - ``seq_mean_token_sum`` (Dr. GRPO-like): sum_i sum_t v_it / num_seqs.

    ``token_sequence`` ([R], values 0..S-1) and ``response_lengths`` ([S], |y_i|) place the tokens
    in their sequences. An empty batch gives 0, never NaN.
    """
    if mode == LossAgg.token_mean:
        return token_mean(values, num_tokens)
    num_seqs = torch.clamp(torch.as_tensor(num_seqs, dtype=values.dtype), min=1.0)
    if mode == LossAgg.seq_mean_token_sum:
        return values.sum() / num_seqs
    if mode != LossAgg.seq_mean_token_mean:
        raise ValueError(f"loss aggregation must be one of {[m.value for m in LossAgg]}, got {mode!r}")
    lengths = response_lengths.to(device=values.device, dtype=values.dtype).clamp(min=1.0)
    return (values / lengths[token_sequence.to(values.device)]).sum() / num_seqs


def token_mean(values: torch.Tensor, num_tokens: float | torch.Tensor) -> torch.Tensor:
    """OR1's token-level aggregation: sum of the response tokens' values / ``num_tokens``.

    ``num_tokens`` is the number of loss tokens in the *whole* batch (all micro-batches, all
    ranks), so summing this over micro-batches gives exactly the batch's token mean; there is
    no per-sequence 1/|y| normalisation. With ``num_tokens == 0`` (nothing to learn from) the
    result is 0, never NaN.
    """
    num_tokens = torch.as_tensor(num_tokens, dtype=values.dtype)
    return values.sum() / torch.clamp(num_tokens, min=1.0)


class TokenStatsHead(torch.nn.Module):
    """Stands in for a causal LM's ``lm_head`` in the learner: returns ``[N, 2]`` (the log-prob of each
    selected target, the entropy there) for the N selected positions, never ``[B, L, vocab]`` logits.

    Before each forward the learner calls ``select(positions, targets)``: ``positions`` are flat
    indices into the ``[B * L]`` hidden states (the positions that predict response tokens),
    ``targets`` the tokens they predict. Prompt positions and padding never reach the vocabulary
    projection.

    ``chunk_tokens > 0`` (``learner.logits_chunk_tokens``): the logits are computed that many
    positions at a time, each chunk under activation checkpointing, so neither the forward nor the
    backward pass ever holds more than one chunk of float32 logits (at 32K tokens and a 152K
    vocabulary the full tensor alone is ~19 GiB, its softmax and gradient twice that). 0: all at
    once. The head keeps the original ``weight`` Parameter, so parameter names, weight tying and
    sharding are unchanged.
    """

    def __init__(self, lm_head: torch.nn.Linear, chunk_tokens: int = 0):
        super().__init__()
        self.weight = lm_head.weight
        self.bias = lm_head.bias
        self.chunk_tokens = chunk_tokens
        self.positions: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.with_entropy = True

    def select(self, positions: torch.Tensor | None, targets: torch.Tensor | None, with_entropy: bool = True) -> None:
        """The positions (flat) and targets of the next forward; ``select(None, None)`` clears them."""
        self.positions, self.targets, self.with_entropy = positions, targets, with_entropy

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        if self.positions is None or self.targets is None or self.positions.shape != self.targets.shape:
            raise RuntimeError("TokenStatsHead.select(positions, targets) must be called before each forward")
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.positions)
        step = self.chunk_tokens if self.chunk_tokens > 0 else max(selected.shape[0], 1)
        parts = []
        for s in range(0, selected.shape[0], step):
            args = (selected[s:s + step], self.targets[s:s + step], self.weight, self.bias, self.with_entropy)
            parts.append(checkpoint(_chunk_token_stats, *args, use_reentrant=False) if self.chunk_tokens > 0
                         else _chunk_token_stats(*args))
        return torch.cat(parts) if parts else selected.new_zeros((0, 2), dtype=torch.float32)


def _chunk_token_stats(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None, with_entropy: bool) -> torch.Tensor:
    logp, entropy = token_log_probs_and_entropy(torch.nn.functional.linear(hidden, weight, bias), targets,
                                                with_entropy)
    return torch.stack([logp, entropy if entropy is not None else torch.zeros_like(logp)], dim=-1)
