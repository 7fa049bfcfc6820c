"""Scoring sequences and preference pairs with a decoder + scalar head.

The score r(x, y) is the head's output at the last token of the response (EOS when the
response was not truncated). Rows are right-padded, so under the causal mask nothing after
that token (more text, padding) can change it.

Trained parameters are {"base": decoder, "lora": adapters or {}, "head": {"w", "b"}}, the
layout of `alignment.training.trainer.Trainable`; `scalar_head_params` turns them into the tree
`ScalarHeadModel` runs on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from alignment import lora as lora_lib
from alignment import model
from alignment.model.config import ModelConfig

Array = jax.Array
Params = Any

HEAD_AXES = {"w": P("embed"), "b": P()}


def init_head(config: ModelConfig) -> dict[str, Array]:
  """Zero head: every sequence starts with score 0 (sigmoid 0.5), i.e. no preference."""
  params = model.init_scalar_head_params(config, jax.random.key(0))
  return {"w": params["w"], "b": params["b"]}


def select_lora_layers(adapters: Params, num_layers: int, last_layers: int) -> Params:
  """Keeps the adapters of the top `last_layers` layers (0 keeps all).

  With adapters only near the output, backpropagation stops at the lowest adapted layer:
  a step costs about one forward pass, which is what makes CPU training affordable.
  """
  if last_layers < 0 or last_layers > num_layers:
    raise ValueError(f"lora.last_layers={last_layers} must be in [0, {num_layers}] "
                     "(0 = all layers)")
  if last_layers == 0:
    return adapters
  keep = {f"layer_{i}" for i in range(num_layers - last_layers, num_layers)}
  return {name: value for name, value in adapters.items() if name in keep}


def scalar_head_params(params: Params, lora: lora_lib.LoraConfig | None,
                       dropout_rng: Array | None = None) -> Params:
  """{"base", "lora", "head"} -> the {"backbone", "w", "b"} tree of `ScalarHeadModel`.

  With LoRA the base is wrapped in stop_gradient: it gets no gradient, and layers below the
  lowest adapter drop out of the backward pass.
  """
  if lora is None:
    backbone = params["base"]
  else:
    backbone = lora_lib.merge(jax.lax.stop_gradient(params["base"]), params["lora"], lora,
                              dropout_rng)
  return {"backbone": backbone, "w": params["head"]["w"], "b": params["head"]["b"]}


def last_token_index(input_mask: Array) -> Array:
  """Index of the last real token of each right-padded row."""
  return jnp.sum(input_mask.astype(jnp.int32), axis=-1) - 1


def sequence_rewards(config: ModelConfig, head_params: Params, tokens: Array,
                     positions: Array, input_mask: Array, last_index: Array) -> Array:
  """r(x, y) [B]: the scalar head read at `last_index` of each right-padded row."""
  mask = model.causal_mask(input_mask.astype(bool))
  values = model.scalar_head_forward(config, head_params, tokens, positions, mask)
  return model.score_at(values, last_index)


def pair_rewards(config: ModelConfig, head_params: Params,
                 batch: dict[str, Any]) -> tuple[Array, Array]:
  """(r_chosen, r_rejected) [b] for a `pad_pair_batch` batch, in one [2b, T] forward pass."""
  sides = [batch["chosen"], batch["rejected"]]
  stacked = {k: jnp.concatenate([s[k] for s in sides]) for k in
             ("tokens", "positions", "input_mask", "last_index")}
  rewards = sequence_rewards(config, head_params, stacked["tokens"], stacked["positions"],
                             stacked["input_mask"], stacked["last_index"])
  b = batch["chosen"]["tokens"].shape[0]
  return rewards[:b], rewards[b:]


def make_pair_score_fn(config: ModelConfig, lora: lora_lib.LoraConfig | None):
  """Jitted (trained params, pair batch) -> (r_chosen, r_rejected)."""
  @jax.jit
  def score_fn(params, batch):
    return pair_rewards(config, scalar_head_params(params, lora), batch)

  return score_fn


def reward_probability(rewards: Array) -> Array:
  """Llama 2's reward in [0, 1]: sigmoid of the raw score."""
  return jax.nn.sigmoid(rewards)
