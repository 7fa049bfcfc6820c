"""Advantage estimators for token-level policy gradients, chosen by name.

Every estimator maps per-token rewards and values of a batch of responses to per-token
(advantages, returns), [B, R] each; `mask` [B, R] is True on a response's real tokens, which
are contiguous from column 0 (padding follows). Values past the end count as 0, so the last
real token bootstraps from nothing: responses are whole episodes.

  gae        generalized advantage estimation (Schulman et al., 2016) with gamma, lambda
  reinforce  discounted reward-to-go with no critic (the value is still trained to it)
  grpo       group-normalized sequence rewards (Shao et al., 2024): each response's total
             reward minus its group's mean, over the group's std; rows i*G..i*G+G-1 are the
             G samples of one prompt
"""

from __future__ import annotations

from typing import Callable, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array


class AdvantageEstimator(Protocol):
  def __call__(self, rewards: Array, values: Array, mask: Array, *, gamma: float, lam: float,
               group_size: int) -> tuple[Array, Array]: ...


def masked_mean(x: Array, mask: Array, axis=None) -> Array:
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
  """(x - mean) / std over the masked entries; with shift_mean=False the mean is kept."""
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  white = (x - mean) * jax.lax.rsqrt(var + eps)
  return jnp.where(mask, white if shift_mean else white + mean, 0.0)


def _reverse_discounted(x: Array, discount: float) -> Array:
  """y[t] = x[t] + discount * y[t+1] along the last axis (y past the end is 0)."""
  def body(carry, xt):
    carry = xt + discount * carry
    return carry, carry
  _, ys = jax.lax.scan(body, jnp.zeros(x.shape[:-1], x.dtype), jnp.moveaxis(x, -1, 0),
                       reverse=True)
  return jnp.moveaxis(ys, 0, -1)


def gae(rewards: Array, values: Array, mask: Array, *, gamma: float = 1.0, lam: float = 0.95,
        group_size: int = 1) -> tuple[Array, Array]:
  del group_size
  mask = mask.astype(bool)
  rewards = jnp.where(mask, rewards, 0.0)
  values = jnp.where(mask, values, 0.0)
  next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
  deltas = rewards + gamma * next_values - values
  advantages = jnp.where(mask, _reverse_discounted(deltas, gamma * lam), 0.0)
  return advantages, jnp.where(mask, advantages + values, 0.0)


def reinforce(rewards: Array, values: Array, mask: Array, *, gamma: float = 1.0,
              lam: float = 0.95, group_size: int = 1) -> tuple[Array, Array]:
  del values, lam, group_size
  mask = mask.astype(bool)
  returns = jnp.where(mask, _reverse_discounted(jnp.where(mask, rewards, 0.0), gamma), 0.0)
  return returns, returns


def grpo(rewards: Array, values: Array, mask: Array, *, gamma: float = 1.0, lam: float = 0.95,
         group_size: int = 1, eps: float = 1e-6) -> tuple[Array, Array]:
  del values, gamma, lam
  mask = mask.astype(bool)
  batch = rewards.shape[0]
  if group_size < 2 or batch % group_size:
    raise ValueError(f"grpo needs groups of >= 2 samples per prompt dividing the batch; got "
                     f"group_size={group_size} for a batch of {batch} "
                     "(set rollout.samples_per_prompt >= 2)")
  totals = jnp.sum(jnp.where(mask, rewards, 0.0), axis=-1).reshape(-1, group_size)
  normalized = (totals - totals.mean(-1, keepdims=True)) / (totals.std(-1, keepdims=True) + eps)
  advantages = jnp.where(mask, normalized.reshape(batch, 1), 0.0)
  returns = jnp.where(mask, totals.reshape(batch, 1), 0.0)
  return advantages, returns


ESTIMATORS: dict[str, Callable[..., tuple[Array, Array]]] = {
    "gae": gae, "reinforce": reinforce, "grpo": grpo}


def get_estimator(name: str) -> Callable[..., tuple[Array, Array]]:
  if name not in ESTIMATORS:
    raise ValueError(f"unknown advantage estimator {name!r}; known: {', '.join(ESTIMATORS)}")
  return ESTIMATORS[name]


def register_estimator(name: str, fn: Callable[..., tuple[Array, Array]]) -> None:
  """Adds an estimator under a new name (names are never silently replaced)."""
  if name in ESTIMATORS:
    raise ValueError(f"advantage estimator {name!r} is already registered")
  ESTIMATORS[name] = fn
