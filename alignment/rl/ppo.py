"""PPO (Schulman et al., 2017) for language models: losses, rollout scoring, update step.

Everything here is a pure function of arrays, jitted once per shape; the Python loop that
samples, scores and iterates is `alignment.rl.ppo_trainer`. One PPO iteration:

  1. sample responses with the KV-cache sampler (`alignment.sampling`)
  2. `make_score_fn`: log-probs of the sampled tokens under the policy and the reference, and
     the critic's values, in one jitted pass over [B, P + R]
  3. the reward function scores each response (host side)
  4. `make_advantage_fn`: per-token reward = -beta * (log pi - log pi_ref), plus the
     (optionally whitened) score on the response's last token; advantages and returns by a
     named estimator (`alignment.rl.advantages`); advantages whitened
  5. several epochs of shuffled mini-batches through `make_update_step`: clipped policy loss
     + vf_coef * clipped value loss - entropy_coef * entropy
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from alignment.rl import advantages as adv_lib
from alignment.rl.roles import (Policy, Reference, ValueModel, response_tokens, token_entropy,
                                token_logprobs)
from alignment.training import step as step_lib

Array = jax.Array
masked_mean = adv_lib.masked_mean
masked_whiten = adv_lib.masked_whiten


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  clip_ratio: float = 0.2  # policy ratio clipped to [1 - eps, 1 + eps]
  clip_value: float = 0.2  # value moves at most this far from its rollout estimate
  vf_coef: float = 0.1
  entropy_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  estimator: str = "gae"
  whiten_rewards: bool = False  # whiten the scores over the batch before adding the KL term
  whiten_advantages: bool = True
  group_size: int = 1  # samples per prompt (grpo groups)

  def __post_init__(self):
    adv_lib.get_estimator(self.estimator)
    if self.clip_ratio <= 0 or self.clip_value <= 0:
      raise ValueError(f"ppo.clip_ratio={self.clip_ratio} and ppo.clip_value="
                       f"{self.clip_value} must be > 0")


# ----------------------------------------------------------------------------------------------
# Losses.


def clipped_policy_loss(logprobs: Array, old_logprobs: Array, advantages: Array, mask: Array,
                        clip_ratio: float) -> tuple[Array, dict[str, Array]]:
  """Token-mean of max(-A r, -A clip(r, 1-eps, 1+eps)), r = pi / pi_old.

  clip_fraction: share of tokens where the clipped term is the larger (binding) one.
  approx_kl: mean of (log r)^2 / 2, a low-variance estimate of KL(pi_old || pi).
  """
  log_ratio = logprobs - old_logprobs
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  return loss, {"clip_fraction": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
                "approx_kl": masked_mean(0.5 * jnp.square(log_ratio), mask),
                "ratio": masked_mean(ratio, mask)}


def clipped_value_loss(values: Array, old_values: Array, returns: Array, mask: Array,
                       clip_value: float) -> tuple[Array, dict[str, Array]]:
  """Token-mean of 0.5 * max((V - G)^2, (V_clipped - G)^2), V_clipped within clip_value of
  the rollout's value."""
  clipped = old_values + jnp.clip(values - old_values, -clip_value, clip_value)
  unclipped_err = jnp.square(values - returns)
  clipped_err = jnp.square(clipped - returns)
  loss = 0.5 * masked_mean(jnp.maximum(unclipped_err, clipped_err), mask)
  return loss, {"value_clip_fraction":
                masked_mean((clipped_err > unclipped_err).astype(jnp.float32), mask)}


def make_loss_fn(policy: Policy, value_model: ValueModel, config: PPOConfig) -> Callable:
  """loss_fn(params, minibatch, rng) -> (loss, metrics), for `step.make_train_step`."""
  def loss_fn(params, batch, rng):
    policy_rng, value_rng = jax.random.split(rng)
    mask = batch["response_mask"]
    logits = policy.logits(params, batch, policy_rng)
    logprobs = token_logprobs(logits, response_tokens(batch))
    entropy = masked_mean(token_entropy(logits), mask)
    pg_loss, pg_metrics = clipped_policy_loss(logprobs, batch["old_logprobs"],
                                              batch["advantages"], mask, config.clip_ratio)
    values = value_model.values(params, batch, value_rng)
    vf_loss, vf_metrics = clipped_value_loss(values, batch["old_values"], batch["returns"],
                                             mask, config.clip_value)
    loss = pg_loss + config.vf_coef * vf_loss - config.entropy_coef * entropy
    return loss, {"policy_loss": pg_loss, "value_loss": vf_loss, "entropy": entropy,
                  **pg_metrics, **vf_metrics}
  return loss_fn


def make_update_step(policy: Policy, value_model: ValueModel, config: PPOConfig,
                     tx: optax.GradientTransformation, compute_dtype: str | None = None):
  """`step(state, minibatch) -> (state, metrics)`: one optimizer update (not jitted)."""
  return step_lib.make_train_step(make_loss_fn(policy, value_model, config), tx, compute_dtype)


# ----------------------------------------------------------------------------------------------
# Rollout scoring.


@functools.lru_cache(maxsize=8)
def make_score_fn(policy: Policy, reference: Reference, value_model: ValueModel) -> Callable:
  """Jitted `score(params, reference_params, batch) -> dict` of [B, R] arrays: the policy's
  and reference's log-probs of the sampled tokens, the policy's entropy and the critic's
  values (all zero on padding). Cached per roles, so equal roles share one compiled program."""
  @jax.jit
  def score(params, reference_params, batch):
    mask = batch["response_mask"]
    targets = response_tokens(batch)
    logits = policy.logits(params, batch)
    out = {"logprobs": token_logprobs(logits, targets), "entropy": token_entropy(logits),
           "ref_logprobs": reference.logprobs(params, reference_params, batch),
           "values": value_model.values(params, batch)}
    return {k: jnp.where(mask, v, 0.0) for k, v in out.items()}
  return score


def last_token_scores(scores: Array, mask: Array) -> Array:
  """[B] scores placed on each response's last real token: [B, R]."""
  length = jnp.sum(mask.astype(jnp.int32), axis=-1)
  columns = jnp.arange(mask.shape[1])[None]
  return jnp.where((columns == (length - 1)[:, None]) & (length > 0)[:, None],
                   scores[:, None], 0.0)


@functools.lru_cache(maxsize=8)
def make_advantage_fn(config: PPOConfig) -> Callable:
  """Jitted `(scores [B], scored, response_mask, kl_coef) -> dict` with per-token rewards,
  advantages, returns and per-sequence KL (cached per config, like `make_score_fn`)."""
  estimator = adv_lib.get_estimator(config.estimator)

  @jax.jit
  def compute(scores, scored, mask, kl_coef):
    mask = mask.astype(bool)
    scores = scores.astype(jnp.float32)
    if config.whiten_rewards:
      scores = (scores - scores.mean()) / (scores.std() + 1e-6)
    kl = jnp.where(mask, scored["logprobs"] - scored["ref_logprobs"], 0.0)
    rewards = -kl_coef * kl + last_token_scores(scores, mask)
    advantages, returns = estimator(rewards, scored["values"], mask, gamma=config.gamma,
                                    lam=config.lam, group_size=config.group_size)
    if config.whiten_advantages:
      advantages = masked_whiten(advantages, mask)
    return {"rewards": rewards, "advantages": advantages, "returns": returns,
            "kl": jnp.sum(kl, axis=-1), "scores_used": scores}
  return compute


def minibatch_indices(size: int, rng: Array, num_minibatches: int) -> list[Array]:
  """Row indices of each shuffled mini-batch of a rollout batch of `size` rows."""
  if size % num_minibatches:
    raise ValueError(f"ppo.num_minibatches={num_minibatches} must divide the rollout batch "
                     f"of {size}")
  order = jax.random.permutation(rng, size)
  per = size // num_minibatches
  return [order[i * per:(i + 1) * per] for i in range(num_minibatches)]

