"""Grouped-query attention with RoPE, optional QK-norm, soft-capping and a sliding window.

The caller passes a boolean mask [B, T, S] (causality, padding, packed segments); this module
only adds the sliding-window band of local layers, measured in cache slots. Slots and positions
advance together for left-padded prompts and for packed segments, so the band is exact there.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignment.model import layers
from alignment.model.config import AttentionType
from alignment.model.low_rank import LowRank, add_low_rank

Array = jax.Array
LayerCache = dict[str, Array]  # {"k": [B, S, K, H], "v": [B, S, K, H]}

# Large negative logit for masked keys; finite so fully masked rows (padding) stay NaN-free.
_MASKED = -2.3819763e38


class Attention(nn.Module):
  num_heads: int
  num_kv_heads: int
  head_dim: int
  embed_dim: int
  query_pre_attn_scalar: float
  attention_type: AttentionType = "global"
  sliding_window_size: int | None = None
  attn_logits_soft_cap: float | None = None
  use_qk_norm: bool = False
  rope_base: float = 10_000.0
  rope_scale: float = 1.0
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array,
               cache: LayerCache | None = None,
               cache_index: Array | None = None,
               lora: dict[str, LowRank] | None = None) -> tuple[Array, LayerCache | None]:
    """`lora` maps sites ("q", "k", "v", "o" here) to low-rank paths on those projections."""
    lora = lora or {}
    init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    wq = layers.param_with_axes(
        self, "q_einsum", init, (self.num_heads, self.embed_dim, self.head_dim),
        ("heads", "embed", "head_dim"), self.param_dtype).astype(self.dtype)
    wkv = layers.param_with_axes(
        self, "kv_einsum", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1,
                                                        batch_axis=(0, 1)),
        (2, self.num_kv_heads, self.embed_dim, self.head_dim),
        (None, "kv_heads", "embed", "head_dim"), self.param_dtype).astype(self.dtype)
    wo = layers.param_with_axes(
        self, "attn_vec_einsum", nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
        (self.num_heads, self.head_dim, self.embed_dim), ("heads", "head_dim", "embed"),
        self.param_dtype).astype(self.dtype)

    q = add_low_rank(jnp.einsum("btd,ndh->btnh", x, wq), x, lora.get("q"))
    k = add_low_rank(jnp.einsum("btd,kdh->btkh", x, wkv[0]), x, lora.get("k"))
    v = add_low_rank(jnp.einsum("btd,kdh->btkh", x, wkv[1]), x, lora.get("v"))
    if self.use_qk_norm:
      q = layers.RMSNorm("head_dim", self.norm_eps, self.param_dtype, name="_query_norm")(q)
      k = layers.RMSNorm("head_dim", self.norm_eps, self.param_dtype, name="_key_norm")(k)
    q = layers.apply_rope(q, positions, self.rope_base, self.rope_scale)
    k = layers.apply_rope(k, positions, self.rope_base, self.rope_scale)
    q = q * jnp.asarray(self.query_pre_attn_scalar**-0.5, q.dtype)

    seq_len = x.shape[1]
    if cache is not None:
      start = jnp.asarray(cache_index, jnp.int32)
      zero = jnp.zeros((), jnp.int32)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                       (zero, start, zero, zero))
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                       (zero, start, zero, zero))
      new_cache = {"k": k, "v": v}
      k, v = k.astype(self.dtype), v.astype(self.dtype)
    else:
      start = jnp.zeros((), jnp.int32)
      new_cache = None

    if self.attention_type == "local":
      q_slots = start + jnp.arange(seq_len)
      k_slots = jnp.arange(k.shape[1])
      band = (q_slots[:, None] - k_slots[None, :]) < self.sliding_window_size
      mask = mask & band[None]

    batch, _, num_heads, head_dim = q.shape
    groups = num_heads // self.num_kv_heads
    q = q.reshape(batch, seq_len, self.num_kv_heads, groups, head_dim)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(jnp.float32)
    logits = layers.soft_cap(logits, self.attn_logits_soft_cap)
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(batch, seq_len, num_heads, head_dim)
    return add_low_rank(jnp.einsum("btnh,nhd->btd", out, wo), out, lora.get("o")), new_cache
