"""Grouped-query attention with RoPE, optional QK-norm, soft-capping and a sliding window.

The caller passes a boolean mask [B, T, S] (causality, padding, packed segments); this module
only adds the sliding-window band of local layers, measured in cache slots. Slots and positions
advance together for left-padded prompts and for packed segments, so the band is exact there.

The scores go through `jax.nn.dot_product_attention` (XLA, or cuDNN flash on a GPU) unless
the model needs what that call lacks (logit soft-capping): see `implementation`. A local
layer's KV cache may be a ring of `sliding_window_size` entries (`init_cache(...,
ring_local=True)`): slot s is written at entry s % window, and the mask's columns are
gathered for the slots the ring holds (`_ring_attend_inputs`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignment.model import activations, layers
from alignment.model.config import AttentionImpl, AttentionType
from alignment.model.low_rank import LowRank, add_low_rank

Array = jax.Array
LayerCache = dict[str, Array]  # {"k": [B, S, K, H], "v": [B, S, K, H]}

# Large negative logit for masked keys; finite so fully masked rows (padding) stay NaN-free.
_MASKED = -2.3819763e38
_CUDNN_DTYPES = ("bfloat16", "float16")


def implementation(requested: AttentionImpl, soft_cap: float | None, dtype: str,
                   head_dim: int, query_len: int, key_len: int,
                   platform: str | None = None) -> tuple[str, str]:
  """The attention implementation to trace and why: ("explicit" | "xla" | "cudnn", reason).

  "auto" takes cuDNN flash on a GPU where jax's constraints for it hold (bf16/fp16, head dim
  a multiple of 8 and <= 128, or <= 256 from Hopper on; even lengths, which its masked
  training kernel needs), XLA's fused-call lowering elsewhere, and the explicit scores when
  the logits are soft-capped. An explicit "xla"/"cudnn" request that cannot hold raises.
  """
  platform = platform or jax.default_backend()
  if soft_cap:
    if requested in ("xla", "cudnn"):
      raise ValueError(f"attention_impl={requested!r} cannot express attn_logits_soft_cap="
                       f"{soft_cap}: jax.nn.dot_product_attention has no logit soft-cap")
    return "explicit", f"attn_logits_soft_cap={soft_cap} (not in jax.nn.dot_product_attention)"
  if requested == "explicit":
    return "explicit", "attention_impl='explicit'"
  if requested == "xla":
    return "xla", "attention_impl='xla'"
  why_not = _cudnn_unsupported(dtype, head_dim, query_len, key_len, platform)
  if requested == "cudnn":
    if why_not:
      raise ValueError(f"attention_impl='cudnn' is not available here: {why_not}")
    return "cudnn", "attention_impl='cudnn'"
  if why_not:
    return "xla", f"auto: not cuDNN ({why_not})"
  return "cudnn", "auto: GPU and cuDNN flash constraints hold"


def _cudnn_unsupported(dtype: str, head_dim: int, query_len: int, key_len: int,
                       platform: str) -> str:
  """Why cuDNN flash attention cannot run this call ("" when it can)."""
  if platform != "gpu":
    return f"platform {platform}, cuDNN needs a GPU"
  if str(dtype) not in _CUDNN_DTYPES:
    return f"dtype {dtype}, cuDNN flash needs bfloat16 or float16"
  capability = getattr(jax.devices()[0], "compute_capability", "0")
  max_head = 256 if float(capability or 0) >= 9.0 else 128
  if head_dim % 8 or head_dim > max_head:
    return f"head_dim {head_dim}, cuDNN flash needs a multiple of 8 <= {max_head}"
  if query_len % 2 or key_len % 2:
    return f"lengths T={query_len}, S={key_len}: a masked cuDNN kernel needs even lengths"
  return ""


def _ring_attend_inputs(cache: LayerCache, k: Array, v: Array, mask: Array, start: Array,
                        window: int) -> tuple[Array, Array, Array, LayerCache]:
  """Keys, values and mask over (ring entries before this call, the new tokens); new ring.

  Entry j of a ring of W entries holds the latest slot s < start with s % W == j (none yet if
  that is negative). The new tokens are attended to directly, so a prompt longer than the
  ring sees its own keys before the ring keeps only its last W. The mask's columns are the
  slots' columns of the caller's full-length [B, T, S] mask, with the band applied here.
  """
  ring = cache["k"].shape[1]
  seq_len = k.shape[1]
  entries = jnp.arange(ring)
  old_slots = start - 1 - jnp.mod(start - 1 - entries, ring)
  new_slots = start + jnp.arange(seq_len)
  slots = jnp.concatenate([old_slots, new_slots])
  held = jnp.concatenate([old_slots >= 0, jnp.ones((seq_len,), bool)])
  columns = jnp.take(mask, jnp.clip(slots, 0, mask.shape[-1] - 1), axis=-1)
  band = (new_slots[:, None] - slots[None, :]) < window
  mask = columns & held[None, None] & band[None]
  dtype = k.dtype
  keys = jnp.concatenate([cache["k"].astype(dtype), k], axis=1)
  values = jnp.concatenate([cache["v"].astype(dtype), v], axis=1)
  kept = min(seq_len, ring)  # only the last `ring` new tokens survive in the ring
  at = jnp.mod(new_slots[seq_len - kept:], ring)
  new_cache = {"k": cache["k"].at[:, at].set(k[:, seq_len - kept:].astype(cache["k"].dtype)),
               "v": cache["v"].at[:, at].set(v[:, seq_len - kept:].astype(cache["v"].dtype))}
  return keys, values, mask, new_cache


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
  attention_impl: AttentionImpl = "explicit"

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
    q = activations.constrain(q, activations.QUERIES)
    k = activations.constrain(k, activations.KEYS)
    v = activations.constrain(v, activations.KEYS)

    seq_len = x.shape[1]
    zero = jnp.zeros((), jnp.int32)
    start = zero if cache is None else jnp.asarray(cache_index, jnp.int32)
    local = self.attention_type == "local"
    new_cache = None
    if cache is not None and local and cache["k"].shape[1] < mask.shape[-1]:
      if cache["k"].shape[1] != self.sliding_window_size:
        raise ValueError(
            f"a local layer's cache holds {cache['k'].shape[1]} slots for a mask over "
            f"{mask.shape[-1]}: a ring cache must hold sliding_window_size="
            f"{self.sliding_window_size} (init_cache(..., ring_local=True))")
      k, v, mask, new_cache = _ring_attend_inputs(
          cache, k.astype(self.dtype), v.astype(self.dtype), mask, start,
          self.sliding_window_size)
      local = False  # the band is in the ring's mask
    elif cache is not None:
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                       (zero, start, zero, zero))
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                       (zero, start, zero, zero))
      new_cache = {"k": k, "v": v}
      k, v = k.astype(self.dtype), v.astype(self.dtype)

    if local:
      q_slots = start + jnp.arange(seq_len)
      k_slots = jnp.arange(k.shape[1])
      band = (q_slots[:, None] - k_slots[None, :]) < self.sliding_window_size
      mask = mask & band[None]

    impl, _ = implementation(self.attention_impl, self.attn_logits_soft_cap, self.dtype,
                             self.head_dim, seq_len, k.shape[1])
    if impl == "explicit":
      out = self._explicit_attention(q, k, v, mask)
    else:
      # The queries are already scaled (query_pre_attn_scalar), hence scale=1.
      dtype = jnp.dtype(self.dtype)
      out = jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                                         mask=mask[:, None], scale=1.0, implementation=impl)
    out = activations.constrain(out, activations.QUERIES)
    return add_low_rank(jnp.einsum("btnh,nhd->btd", out, wo), out, lora.get("o")), new_cache

  def _explicit_attention(self, q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Scores materialised as float32 [B, K, G, T, S], soft-capped, masked, softmaxed."""
    batch, seq_len, num_heads, head_dim = q.shape
    groups = num_heads // self.num_kv_heads
    q = q.reshape(batch, seq_len, self.num_kv_heads, groups, head_dim)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(jnp.float32)
    logits = layers.soft_cap(logits, self.attn_logits_soft_cap)
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(batch, seq_len, num_heads, head_dim)
