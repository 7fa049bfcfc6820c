"""Attention masks and positions built from padding or packing information.

Each returns a boolean [B, T, S] mask; True means the query may attend to that key slot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def causal_mask(input_mask: Array) -> Array:
  """Causal mask over one sequence per row; `input_mask` [B, T] is False on padding."""
  length = input_mask.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  return causal[None] & input_mask[:, None, :].astype(bool)


def segment_causal_mask(segment_ids: Array) -> Array:
  """Causal mask for packed rows: a token sees earlier tokens of its own segment only.

  `segment_ids` [B, T] numbers the packed sequences 1, 2, ...; 0 marks padding.
  """
  length = segment_ids.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return causal[None] & same & (segment_ids[:, None, :] != 0)


def positions_from_mask(input_mask: Array) -> Array:
  """RoPE positions that start at 0 on the first real token (left padding gets 0)."""
  input_mask = input_mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(input_mask, axis=-1) - 1, 0)
