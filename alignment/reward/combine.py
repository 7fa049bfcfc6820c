"""Llama 2's combination of a safety and a helpfulness reward, and its transform before RL.

Touvron et al. (2023), section 3.2.2, with R_s, R_h the sigmoid scores in [0, 1]:

  R_c = R_s  if the prompt is flagged unsafe or R_s < 0.15,  else R_h
  R   = whiten(logit(R_c))

The 0.15 threshold (config `combine.safety_threshold`) and the unsafe flags come from config.
logit(sigmoid(r)) = r, so `combined_logit` selects between the raw scores directly: exact, and
no infinities when a sigmoid saturates to 0 or 1 in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CombineConfig:
  safety_threshold: float = 0.15  # on the safety sigmoid score R_s
  # Data/eval sources whose prompts are flagged unsafe (safety prompts, as Llama 2 tags them).
  unsafe_sources: tuple[str, ...] = ()
  whiten: bool = True

  def __post_init__(self):
    if not 0.0 < self.safety_threshold < 1.0:
      raise ValueError(f"combine.safety_threshold={self.safety_threshold} must be in (0, 1): "
                       "it is a threshold on the sigmoid safety score")


def unsafe_flags(sources: Sequence[str], labels: Sequence[str | None],
                 config: CombineConfig) -> list[bool]:
  """A prompt is flagged unsafe when it is labelled "unsafe" or comes from an unsafe source."""
  if len(sources) != len(labels):
    raise ValueError(f"{len(sources)} sources but {len(labels)} labels")
  unsafe = set(config.unsafe_sources)
  return [label == "unsafe" or source in unsafe for source, label in zip(sources, labels)]


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


def whiten(x: Array, mean: Array | float | None = None, std: Array | float | None = None,
           eps: float = 1e-6) -> Array:
  """(x - mean) / std, by the batch's own statistics unless fixed ones are given."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x) if mean is None else mean
  std = jnp.std(x) if std is None else std
  return (x - mean) / (std + eps)


def rl_reward(safety_reward: Array, helpfulness_reward: Array, unsafe_prompt: Array,
              config: CombineConfig = CombineConfig()) -> Array:
  """The reward an RL step sees: whiten(logit(R_c)) (or logit(R_c) with whiten=False)."""
  r = combined_logit(safety_reward, helpfulness_reward, unsafe_prompt, config.safety_threshold)
  return whiten(r) if config.whiten else r


def parse_sources(text: str | Iterable[str]) -> tuple[str, ...]:
  """A comma-separated config string (or a list) -> tuple of names."""
  items = text.split(",") if isinstance(text, str) else list(text)
  return tuple(s.strip() for s in items if s.strip())
