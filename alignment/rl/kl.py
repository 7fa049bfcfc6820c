"""KL-penalty coefficients for RLHF: fixed, or adapted toward a target KL.

The adaptive rule is Ziegler et al. (2019), "Fine-Tuning Language Models from Human
Preferences", section 2.2: with e = clip(KL / target - 1, -0.2, 0.2),

  beta <- beta * (1 + e * n / horizon)

after a batch of n rollouts, so beta grows while the policy drifts past the target and
shrinks while it stays closer. Controllers are tiny host-side objects; their state is one
float that the PPO job saves with the data position, so a resumed run continues with the
coefficient it had.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class FixedKLController:
  """beta stays at its initial value."""

  value: float

  def update(self, kl: float, num_rollouts: int) -> float:
    del kl, num_rollouts
    return self.value


@dataclasses.dataclass
class AdaptiveKLController:
  """beta moves proportionally toward the coefficient that gives `target` KL (nats/sequence)."""

  value: float
  target: float
  horizon: int
  max_error: float = 0.2

  def __post_init__(self):
    if self.target <= 0:
      raise ValueError(f"kl.target={self.target} must be > 0 for the adaptive controller")
    if self.horizon <= 0:
      raise ValueError(f"kl.horizon={self.horizon} must be > 0 for the adaptive controller")

  def update(self, kl: float, num_rollouts: int) -> float:
    error = float(np.clip(kl / self.target - 1.0, -self.max_error, self.max_error))
    self.value *= 1.0 + error * num_rollouts / self.horizon
    return self.value


KLController = FixedKLController | AdaptiveKLController


def make_kl_controller(kind: str, init: float, target: float = 6.0,
                       horizon: int = 10_000) -> KLController:
  """'fixed' or 'adaptive' (Ziegler et al. use target 6 nats, horizon 10k)."""
  if init < 0:
    raise ValueError(f"kl.coef={init} must be >= 0")
  if kind == "fixed":
    return FixedKLController(init)
  if kind == "adaptive":
    return AdaptiveKLController(init, target, horizon)
  raise ValueError(f"unknown kl.controller {kind!r}; expected 'fixed' or 'adaptive'")
