"""avg@k and pass@k, per data source: what validation logs and ``python -m or1.eval`` reports.

For a problem with ``n`` sampled responses of which ``c`` are correct:

- accuracy = c / n; **avg@k** of a set of problems is the mean accuracy over them with n = k
  samples each (OR1's headline metric: avg@32 on AIME24 and AIME25, reported per benchmark);
- **pass@k** is the chance that at least one of k responses drawn without replacement from the n
  is correct, estimated without bias as ``1 - C(n - c, k) / C(n, k)`` (Chen et al., 2021), and
  averaged over the problems. With n = k it is 1 if any response is correct, else 0; so
  pass@k >= avg@k always.

Every problem counts once in its source's figures and once in ``all`` (so ``all`` weighs sources
by their problem counts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from or1.workers.rollout import by_prompt

ALL = "all"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) for k <= n.

    Computed as 1 - prod_{i=n-c+1..n} (1 - k / i), which never forms the huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class ProblemResult:
    """One problem's samples, scored."""

    index: int  # position in the evaluated dataset
    data_source: str
    n: int  # responses sampled
    correct: int
    reward_mean: float
    response_tokens_mean: float
    truncated_frac: float
    where: str = ""  # file and row (``or1.data.sources.RowRef``)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    def record(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy}


def summarize(problems: Sequence[ProblemResult], k: int) -> dict[str, dict[str, float]]:
    """``{source: {"avg@k": ..., "pass@k": ..., "n": problems}, ..., "all": {...}}`` with k's value in
    the key names (``avg@8``). Every problem must have at least k samples."""
    groups: dict[str, list[ProblemResult]] = {}
    for p in problems:
        groups.setdefault(p.data_source, []).append(p)
    out = {source: _figures(members, k) for source, members in sorted(groups.items())}
    out[ALL] = _figures(list(problems), k)
    return out


def _figures(problems: list[ProblemResult], k: int) -> dict[str, float]:
    return {f"avg@{k}": float(np.mean([p.accuracy for p in problems])),
            f"pass@{k}": float(np.mean([pass_at_k(p.n, p.correct, k) for p in problems])),
            "n": len(problems),
            "response_tokens_mean": float(np.mean([p.response_tokens_mean for p in problems])),
            "truncated_frac": float(np.mean([p.truncated_frac for p in problems]))}


def score_problems(samples: list, correct, rewards, n: int, data_sources: Sequence[str],
                   where: Sequence[str] | None = None) -> list[ProblemResult]:
    """Per-problem results from a rollout's samples (``n`` per problem, problem by problem, as the
    engines return them) and their per-sample ``correct`` and ``rewards`` (tensors or sequences)."""
    results = []
    for i, (source, members) in enumerate(zip(data_sources, by_prompt(samples, n, len(data_sources)))):
        results.append(ProblemResult(
            i, source, n, int(round(float(sum(float(c) for c in correct[i * n:(i + 1) * n])))),
            float(np.mean([float(r) for r in rewards[i * n:(i + 1) * n]])),
            float(np.mean([len(s.token_ids) for s in members])), float(np.mean([s.truncated for s in members])),
            where[i] if where else ""))
    return results


def table(summary: dict[str, dict[str, float]], k: int) -> str:
    """The summary as an aligned text table, sources first, ``all`` last."""
    rows = [(source, f"{v['n']:d}", f"{v[f'avg@{k}']:.4f}", f"{v[f'pass@{k}']:.4f}", f"{v['response_tokens_mean']:.0f}",
             f"{v['truncated_frac']:.3f}") for source, v in summary.items()]
    header = ("data_source", "problems", f"avg@{k}", f"pass@{k}", "mean_len", "truncated")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
