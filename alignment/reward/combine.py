"""Llama 2's combination of a safety and a helpfulness reward.

Touvron et al. (2023), section 3.2.2, with R_s, R_h the sigmoid scores in [0, 1]:

  R_c = R_s  if the prompt is flagged unsafe or R_s < 0.15,  else R_h
  R   = whiten(logit(R_c))

The threshold and the unsafe flags are the RL job's (`rs.safety_threshold` and
`rs.unsafe_sources` for rejection sampling, `reward.*` for PPO, checked by
`check_threshold`); PPO whitens (`ppo.whiten_rewards`). logit(sigmoid(r)) = r, so
`combined_logit` selects between the raw scores directly: exact, and no infinities when a
sigmoid saturates to 0 or 1 in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def check_threshold(threshold: float, key: str) -> None:
  """The threshold is on the sigmoid safety score: refuse one outside (0, 1), naming `key`."""
  if not 0.0 < threshold < 1.0:
    raise ValueError(f"{key}={threshold} must be in (0, 1): it is a threshold on the sigmoid "
                     "safety score")


def use_safety(safety_reward: Array, unsafe_prompt: Array, threshold: float) -> Array:
  """Where Llama 2 takes the safety reward: flagged prompts, or R_s below the threshold."""
  return unsafe_prompt.astype(bool) | (jax.nn.sigmoid(safety_reward) < threshold)


def combined_probability(safety_reward: Array, helpfulness_reward: Array,
                         unsafe_prompt: Array, threshold: float = 0.15) -> Array:
  """R_c in [0, 1] from raw safety and helpfulness scores."""
  pick = use_safety(safety_reward, unsafe_prompt, threshold)
  return jnp.where(pick, jax.nn.sigmoid(safety_reward), jax.nn.sigmoid(helpfulness_reward))


def combined_logit(safety_reward: Array, helpfulness_reward: Array, unsafe_prompt: Array,
                   threshold: float = 0.15) -> Array:
  """logit(R_c): the raw score of whichever model the rule picks."""
  pick = use_safety(safety_reward, unsafe_prompt, threshold)
  return jnp.where(pick, safety_reward, helpfulness_reward).astype(jnp.float32)
