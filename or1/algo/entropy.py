"""The entropy bonus: OR1's adaptive controller (section 3.2 of the report) or a fixed coefficient.

Both implement one interface, so the driver never asks which it has:

- ``coef_for(e_k)``: the bonus coefficient alpha_k for step k, given the entropy ``e_k`` measured
  on step k's rollout batch before the update (OR1: -mean log-prob of the sampled tokens);
- ``observe(e_k)``: after the update, let the controller react;
- ``coef``: the controller's state (logged as ``entropy/controller_coef``);
- ``state_dict`` / ``load_state_dict``: checkpointed with the run.

The loss subtracts alpha_k times the token-mean full-vocabulary entropy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from or1.config import EntropyConfig, EntropyMode


@dataclass
class AdaptiveEntropyController:
    """An entropy bonus that switches on only when the policy's entropy falls below a target.

        c_0 = 0
        c_{k+1} = clip(c_k + delta, lo, hi)  if e_k < target
                  clip(c_k - delta, lo, hi)  if e_k > target      (unchanged if equal)
        alpha_k = c_k  if e_k <= target  else 0

    The state (``coef``) is checkpointed: OR1's released code restarts it at 0 on resume, which
    changes the run; ours does not.
    """

    target: float = 0.2
    delta: float = 0.005
    min_coef: float = 0.0
    max_coef: float = 0.005
    coef: float = 0.0

    def coef_for(self, entropy: float) -> float:
        """alpha_k for this step's measured entropy (call before ``observe``)."""
        return self.coef if entropy <= self.target and self.coef > 0 else 0.0

    def observe(self, entropy: float) -> float:
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


@dataclass
class FixedEntropyBonus:
    """alpha_k = coef every step, whatever the entropy (0: no bonus). Nothing to checkpoint but coef."""

    coef: float = 0.0

    def coef_for(self, entropy: float) -> float:
        return self.coef

    def observe(self, entropy: float) -> float:
        return self.coef

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        pass  # the configured coefficient wins: a resumed run may change it on purpose


def make_entropy_bonus(cfg: EntropyConfig) -> AdaptiveEntropyController | FixedEntropyBonus:
    if cfg.mode == EntropyMode.adaptive:
        return AdaptiveEntropyController(cfg.target, cfg.delta, cfg.min_coef, cfg.max_coef)
    return FixedEntropyBonus(cfg.fixed_coef)
