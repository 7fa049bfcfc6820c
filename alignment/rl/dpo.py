"""Direct Preference Optimization (Rafailov et al., 2023) and two of its variants.

With h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)), the sequence
log-probabilities summed over response tokens only:

  sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
           (eps = label_smoothing; eps > 0 is conservative DPO, Mitchell 2023)
  ipo      (h - 1 / (2 beta))^2   (Azar et al., 2023)

The implicit reward of a response is beta * (log pi - log ref). With LoRA the reference is the
frozen base with adapters off: both forward passes run in the same jitted step on one copy of
the weights. Without LoRA a frozen copy rides in the parameter tree under "reference".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from alignment import lora as lora_lib
from alignment import model
from alignment import sharding
from alignment.model.config import ModelConfig
from alignment.training.trainer import Trainable

Array = jax.Array
LOSS_TYPES = ("sigmoid", "ipo")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  beta: float = 0.1
  loss_type: str = "sigmoid"  # 'sigmoid' (DPO / cDPO) | 'ipo'
  label_smoothing: float = 0.0  # cDPO's eps: share of preference labels assumed flipped

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(f"dpo.loss_type={self.loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    if not self.beta > 0:
      raise ValueError(f"dpo.beta={self.beta} must be > 0")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"dpo.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
    if self.loss_type == "ipo" and self.label_smoothing:
      raise ValueError("dpo.label_smoothing applies to the sigmoid loss only, not to 'ipo'")


def sequence_logprobs(config: ModelConfig, params: Any, side: dict[str, Array]) -> Array:
  """Sum of log p(token) over each row's response tokens [B].

  `side` is one side of a `pad_pair_batch` batch: tokens, input_mask and loss_mask [B, T]
  (loss_mask[t] weights the prediction of token t, made at position t - 1).
  """
  tokens = side["tokens"]
  input_mask = side["input_mask"].astype(bool)
  mask = model.causal_mask(input_mask[:, :-1])
  positions = model.positions_from_mask(input_mask[:, :-1])
  logits, _ = model.forward(config, params, tokens[:, :-1], positions, mask)
  token_logp = -optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), tokens[:, 1:])
  weights = side["loss_mask"][:, 1:].astype(jnp.float32) * input_mask[:, 1:]
  return jnp.sum(token_logp * weights, axis=-1)


def pair_logprobs(config: ModelConfig, params: Any, batch: dict[str, Any]) -> tuple[Array, Array]:
  """(chosen, rejected) sequence log-probs [b] in one [2b, T] forward pass."""
  sides = (batch["chosen"], batch["rejected"])
  stacked = {k: jnp.concatenate([s[k] for s in sides]) for k in
             ("tokens", "input_mask", "loss_mask")}
  logp = sequence_logprobs(config, params, stacked)
  b = batch["chosen"]["tokens"].shape[0]
  return logp[:b], logp[b:]


def pair_terms(policy_chosen: Array, policy_rejected: Array, reference_chosen: Array,
               reference_rejected: Array, config: DPOConfig) -> dict[str, Array]:
  """Per-pair [b] loss, implicit rewards and whether the chosen reply wins (ties: half)."""
  chosen_ratio = policy_chosen - reference_chosen
  rejected_ratio = policy_rejected - reference_rejected
  h = chosen_ratio - rejected_ratio
  if config.loss_type == "ipo":
    losses = jnp.square(h - 1.0 / (2.0 * config.beta))
  else:
    eps = config.label_smoothing
    losses = (-(1.0 - eps) * jax.nn.log_sigmoid(config.beta * h)
              - eps * jax.nn.log_sigmoid(-config.beta * h))
  chosen_reward = config.beta * chosen_ratio
  rejected_reward = config.beta * rejected_ratio
  margin = chosen_reward - rejected_reward
  return {"loss": losses, "reward_margin": margin, "reward_chosen": chosen_reward,
          "reward_rejected": rejected_reward,
          "reward_accuracy": jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0))}


def dpo_loss(policy_chosen: Array, policy_rejected: Array, reference_chosen: Array,
             reference_rejected: Array, config: DPOConfig) -> tuple[Array, dict[str, Array]]:
  """Mean loss over pairs of sequence log-probs [b], and the means of DPO's usual metrics."""
  terms = pair_terms(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                     config)
  metrics = {k: jnp.mean(v) for k, v in terms.items() if k != "loss"}
  metrics.update(logp_chosen=jnp.mean(policy_chosen), logp_rejected=jnp.mean(policy_rejected))
  return jnp.mean(terms["loss"]), metrics


def policy_and_reference(params: dict[str, Any], lora: lora_lib.LoraConfig | None,
                         dropout_rng: Array | None = None) -> tuple[Any, Any]:
  """(policy decoder params, reference decoder params) from the trained tree.

  LoRA: policy = base + adapters, reference = the same base with adapters off. Full
  fine-tuning: policy = "base", reference = the frozen "reference" copy.
  """
  if lora is not None:
    base = jax.lax.stop_gradient(params["base"])
    return lora_lib.merge(base, params["lora"], lora, dropout_rng), base
  if "reference" not in params:
    raise ValueError("full-parameter DPO needs a frozen 'reference' copy in the parameters "
                     "(with LoRA the base with adapters off is the reference)")
  return params["base"], jax.lax.stop_gradient(params["reference"])


def add_frozen_reference(trainable: Trainable, mesh) -> None:
  """Full fine-tuning: a frozen copy of the starting weights as "reference" (sharded like the
  base, never updated); with LoRA the base with adapters off is the reference already."""
  if trainable.lora is not None:
    return
  trainable.params["reference"] = jax.tree.map(jnp.copy, trainable.params["base"])
  trainable.shardings["reference"] = sharding.logical_to_shardings(
      model.param_logical_axes(trainable.model_config),
      jax.eval_shape(lambda: trainable.params["base"]), mesh)
  trainable.frozen = (*trainable.frozen, "^reference/")


def make_loss_fn(config: ModelConfig, lora: lora_lib.LoraConfig | None,
                 dpo: DPOConfig) -> Callable[..., tuple[Array, dict[str, Array]]]:
  """`loss_fn(params, batch, rng)` over {"base", "lora"(, "reference")} and pair batches."""
  def loss_fn(params: Any, batch: dict[str, Any], rng: Array):
    dropout_rng = rng if lora is not None and lora.dropout > 0 else None
    policy, reference = policy_and_reference(params, lora, dropout_rng)
    policy_c, policy_r = pair_logprobs(config, policy, batch)
    ref_c, ref_r = pair_logprobs(config, reference, batch)
    return dpo_loss(policy_c, policy_r, jax.lax.stop_gradient(ref_c),
                    jax.lax.stop_gradient(ref_r), dpo)

  return loss_fn
