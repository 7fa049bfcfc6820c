"""Optax optimizer from a config: AdamW, warmup + decay schedule, clipping, accumulation,
and frozen parameters that get neither updates nor optimizer state.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW hyper-parameters. Step counts are optimizer updates, not micro-batches."""

  learning_rate: float = 1e-4
  schedule: str = "cosine"  # decay after warmup: cosine | linear | constant
  warmup_steps: int = 0
  # Length of the whole schedule (warmup included); the decay ends there.
  total_steps: int = 1000
  end_learning_rate_ratio: float = 0.0  # final lr = ratio * learning_rate
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  # Decoupled weight decay, applied to matrices only (norm scales are not decayed).
  weight_decay: float = 0.0
  max_grad_norm: float | None = 1.0  # global-norm clipping; None disables it
  grad_accum_steps: int = 1  # micro-batches per update (optax.MultiSteps)
  # Regexes matched (re.search) against '/'-joined parameter paths, e.g. "embedder/".
  frozen: tuple[str, ...] = ()

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"optimizer.schedule={self.schedule!r}; expected one of {SCHEDULES}")
    if self.grad_accum_steps < 1:
      raise ValueError(f"optimizer.grad_accum_steps={self.grad_accum_steps} must be >= 1")
    if self.warmup_steps < 0 or self.total_steps < self.warmup_steps:
      raise ValueError(f"optimizer: need 0 <= warmup_steps ({self.warmup_steps}) <= "
                       f"total_steps ({self.total_steps})")


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine / linear decay or a constant."""
  peak = config.learning_rate
  end = peak * config.end_learning_rate_ratio
  decay_steps = config.total_steps - config.warmup_steps
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, config.warmup_steps,
                                              config.total_steps, end)
  if config.schedule == "linear":
    after = optax.linear_schedule(peak, end, max(decay_steps, 1))
  else:
    after = optax.constant_schedule(peak)
  if config.warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def param_paths(params: Any) -> Any:
  """The tree of '/'-joined key paths, e.g. 'layer_0/attn/q_einsum'."""
  def path(keys, _):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)
  return jax.tree_util.tree_map_with_path(path, params)


def trainable_mask(params: Any, frozen: tuple[str, ...] | list[str]) -> Any:
  """True for parameters that train, False for those matched by a `frozen` regex.

  Raises if a pattern matches nothing: a typo would otherwise silently train everything.
  """
  paths = param_paths(params)
  all_paths = jax.tree.leaves(paths)
  for pattern in frozen:
    if not any(re.search(pattern, p) for p in all_paths):
      raise ValueError(f"optimizer.frozen pattern {pattern!r} matches no parameter; "
                       f"parameters look like {all_paths[:3]}")
  return jax.tree.map(lambda p: not any(re.search(f, p) for f in frozen), paths)


def _decay_mask(params: Any) -> Any:
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """The optax chain for `config`.

  Frozen parameters go through `optax.multi_transform` to `set_to_zero`, which keeps no
  state, so they cost no Adam moments nor accumulation buffers.
  """
  parts = []
  if config.max_grad_norm is not None:
    parts.append(optax.clip_by_global_norm(config.max_grad_norm))
  parts.append(optax.adamw(make_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=_decay_mask))
  tx = optax.chain(*parts)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps).gradient_transformation()
  if not config.frozen:
    return tx

  def labels(params):
    mask = trainable_mask(params, config.frozen)
    return jax.tree.map(lambda trains: "trainable" if trains else "frozen", mask)

  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)


def learning_rate_at(config: OptimizerConfig, step: int) -> float:
  """The learning rate applied at train-step `step` (micro-batches count as steps)."""
  return float(make_schedule(config)(step // config.grad_accum_steps))
