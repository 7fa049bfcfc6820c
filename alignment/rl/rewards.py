"""PPO's rewards: host-side functions from finished rollouts to one score per response.

A saved reward model (`reward.scorer.text_rewards`), Llama 2's safety/helpfulness rule over
two of them (`reward.combine`), or a toy reward whose optimum is known (tests, demos);
`make_reward` builds the one a config's `reward` section names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import jax.numpy as jnp
import numpy as np

from alignment import schema
from alignment.reward import combine
from alignment.reward.scorer import text_rewards


@dataclasses.dataclass(frozen=True)
class Rollouts:
  """What a reward sees: the prompts, the decoded responses and their token ids."""

  prompts: Sequence[str]
  sources: Sequence[str]
  responses: Sequence[str]
  tokens: np.ndarray  # [B, R] response ids (stop token included, padding after `lengths`)
  lengths: np.ndarray  # [B]


class RewardFunction(Protocol):
  name: str

  def __call__(self, rollouts: Rollouts) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class TokenFractionReward:
  """The fraction of a response's tokens equal to `token_id` (or to any of `more_ids`): a toy
  reward whose optimum is known, for tests and demos. Several ids give a random model's
  samples enough hits for the reward to move within a few iterations."""

  token_id: int
  more_ids: tuple[int, ...] = ()
  name: str = "token_fraction"

  def __call__(self, rollouts: Rollouts) -> np.ndarray:
    tokens, lengths = np.asarray(rollouts.tokens), np.asarray(rollouts.lengths)
    real = np.arange(tokens.shape[1])[None] < lengths[:, None]
    hits = np.sum(np.isin(tokens, (self.token_id, *self.more_ids)) & real, axis=1)
    return (hits / np.maximum(lengths, 1)).astype(np.float32)


class RewardModelReward:
  """The raw score r(prompt, response) of a saved reward model (`alignment/reward/`)."""

  name = "reward_model"

  def __init__(self, directory: str, batch_size: int = 8):
    self.directory = directory
    self.rewards = text_rewards(directory, batch_size)

  def __call__(self, rollouts: Rollouts) -> np.ndarray:
    return self.rewards(rollouts.prompts, rollouts.responses).astype(np.float32)


class CombinedReward:
  """Llama 2's rule: the safety RM's score on unsafe-flagged prompts or when its sigmoid is
  below the threshold, else the helpfulness RM's (logit scale; whitening is PPO's job)."""

  name = "combined"

  def __init__(self, safety_dir: str, helpfulness_dir: str, threshold: float = 0.15,
               unsafe_sources: Sequence[str] = ("hh_harmless",), batch_size: int = 8):
    self.safety = RewardModelReward(safety_dir, batch_size)
    self.helpfulness = RewardModelReward(helpfulness_dir, batch_size)
    self.threshold = threshold
    self.unsafe_sources = tuple(unsafe_sources)

  def __call__(self, rollouts: Rollouts) -> np.ndarray:
    unsafe = np.array([s in self.unsafe_sources for s in rollouts.sources])
    return np.asarray(combine.combined_logit(
        jnp.asarray(self.safety(rollouts)), jnp.asarray(self.helpfulness(rollouts)),
        jnp.asarray(unsafe), self.threshold))


REWARD_KINDS = ("token_fraction", "reward_model", "combined")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """Which reward PPO maximises (a job's `reward` section; see configs/ppo.py)."""

  kind: str = "combined"  # one of REWARD_KINDS
  safety_dir: str = ""  # combined: saved RM directories
  helpfulness_dir: str = ""
  model_dir: str = ""  # reward_model
  safety_threshold: float = 0.15  # combined: Llama 2's rule
  unsafe_sources: tuple[str, ...] = ("hh_harmless",)
  token: str = ""  # token_fraction: pieces or ids, space-separated
  batch_size: int = 8

  def __post_init__(self):
    combine.check_threshold(self.safety_threshold, "reward.safety_threshold")


def make_reward(spec: RewardSpec, tokenizer) -> RewardFunction:
  """The reward `spec` names, checked (a missing directory or piece names the key)."""
  kind = spec.kind
  if kind == "token_fraction":
    # One piece or id, or several separated by spaces (pieces never hold a space: "▁" is).
    ids = []
    for token in str(spec.token).split() or [""]:
      if token.lstrip("-").isdigit():
        ids.append(int(token))
      elif tokenizer is None:
        raise ValueError(f"reward.token={token!r} is a piece; it needs a tokenizer")
      else:
        ids.append(tokenizer.token_id(token))
    return TokenFractionReward(ids[0], tuple(ids[1:]))
  if kind == "reward_model":
    if not spec.model_dir:
      raise ValueError("reward.kind='reward_model' needs reward.model_dir (a saved RM directory)")
    return RewardModelReward(spec.model_dir, spec.batch_size)
  if kind == "combined":
    if not (spec.safety_dir and spec.helpfulness_dir):
      raise ValueError("reward.kind='combined' needs reward.safety_dir and "
                       "reward.helpfulness_dir (saved RM directories)")
    unsafe = schema.names(spec.unsafe_sources)
    return CombinedReward(spec.safety_dir, spec.helpfulness_dir, spec.safety_threshold,
                          unsafe, spec.batch_size)
  raise ValueError(f"unknown reward.kind {kind!r}; known: {', '.join(REWARD_KINDS)}")
