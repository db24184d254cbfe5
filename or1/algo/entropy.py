"""Adaptive entropy control (OR1, section 3.2 of the report)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class AdaptiveEntropyController:
    """An entropy bonus that switches on only when the policy's entropy falls below a target.

        c_0 = init_coef (0)
        c_{k+1} = clip(c_k + delta, lo, hi)  if e_k < target
                  clip(c_k - delta, lo, hi)  if e_k > target      (unchanged if equal)
        bonus coefficient at step k:  alpha_k = c_k  if e_k <= target  else 0

    ``e_k`` is the entropy measured on step k's rollout batch before the update (OR1 measures
    -mean log-prob of the sampled tokens). The loss subtracts alpha_k times the token-mean
    full-vocabulary entropy. The state (``coef``) is checkpointed: OR1's released code restarts it
    at 0 on resume, which changes the run; ours does not.
    """

    target: float = 0.2
    delta: float = 0.005
    min_coef: float = 0.0
    max_coef: float = 0.005
    coef: float = 0.0

    def bonus_coef(self, entropy: float) -> float:
        """alpha_k for this step's measured entropy (call before ``update``)."""
        return self.coef if entropy <= self.target and self.coef > 0 else 0.0

    def update(self, entropy: float) -> float:
        """Move c by one delta towards keeping entropy at the target; returns the new c."""
        if entropy < self.target:
            self.coef += self.delta
        elif entropy > self.target:
            self.coef -= self.delta
        self.coef = min(max(self.coef, self.min_coef), self.max_coef)
        return self.coef

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])
