"""A decoder with a scalar head: reward models and PPO value functions.

The decoder is reused as a submodule (`backbone`), so its parameters keep the same tree as a
plain `Transformer` and can be initialised from, or shared with, a language model.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignment.model import layers
from alignment.model.config import ModelConfig
from alignment.model.transformer import LowRankPaths, Transformer, _dummy_inputs

Array = jax.Array


class ScalarHeadModel(nn.Module):
  """Maps every position's final hidden state to one number: [B, T] scores."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, attention_mask: Array,
               lora: LowRankPaths | None = None) -> Array:
    """`lora`: optional low-rank paths on the backbone's projections (unmerged LoRA)."""
    hidden, _ = Transformer(self.config, name="backbone")(
        tokens, positions, attention_mask, return_hidden=True, lora=lora)
    w = layers.param_with_axes(self, "w", nn.initializers.zeros_init(),
                               (self.config.embed_dim,), ("embed",), self.config.param_dtype)
    b = self.param("b", nn.initializers.zeros_init(), (), self.config.param_dtype)
    return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), w.astype(jnp.float32)) + b


def init_scalar_head_params(config: ModelConfig, rng: Array, backbone_params=None):
  """Head parameters (zero-initialised), optionally on top of an existing decoder's params."""
  params = nn.unbox(ScalarHeadModel(config).init(rng, *_dummy_inputs())["params"])
  if backbone_params is not None:
    params["backbone"] = backbone_params
  return params


def scalar_head_forward(config: ModelConfig, params, tokens: Array, positions: Array,
                        attention_mask: Array, lora: LowRankPaths | None = None) -> Array:
  """[B, T] scalar outputs for every position (`lora`: as in `transformer.forward`)."""
  return ScalarHeadModel(config).apply({"params": params}, tokens, positions, attention_mask,
                                       lora)


def score_at(values: Array, index: Array) -> Array:
  """Picks values[b, index[b]]: the score of each sequence at its last response token."""
  return jnp.take_along_axis(values, index[:, None].astype(jnp.int32), axis=1)[:, 0]
