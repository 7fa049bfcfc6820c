"""The Gemma decoder: embedder, a stack of attention + GeGLU blocks, final norm, tied logits.

Parameter tree (mirrors the official Flax Gemma checkpoints, which eases loading them):
  embedder/input_embedding                     [V, D]
  layer_{i}/pre_attention_norm/scale           [D]
  layer_{i}/attn/{q_einsum,kv_einsum,attn_vec_einsum}/...
  layer_{i}/attn/{_query_norm,_key_norm}/scale [H]     (Gemma 3)
  layer_{i}/post_attention_norm/scale          [D]     (Gemma 2/3)
  layer_{i}/pre_ffw_norm/scale                 [D]
  layer_{i}/mlp/{gating_einsum,linear}
  layer_{i}/post_ffw_norm/scale                [D]     (Gemma 2/3)
  final_norm/scale                             [D]
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignment.model import layers
from alignment.model.attention import Attention, LayerCache
from alignment.model.config import AttentionType, ModelConfig
from alignment.model.low_rank import LowRank, check_paths

Array = jax.Array
Params = Any
Cache = dict[str, Any]  # {"index": int32[], "layer_{i}": LayerCache}
# Optional low-rank paths (unmerged LoRA): {"layer_{i}": {site: LowRank}}, see `low_rank`.
LowRankPaths = dict[str, dict[str, LowRank]]


class Block(nn.Module):
  config: ModelConfig
  attention_type: AttentionType

  @nn.compact
  def __call__(self, x, positions, mask, cache: LayerCache | None, cache_index,
               lora: dict[str, LowRank] | None = None):
    cfg = self.config
    norm = lambda name: layers.RMSNorm("embed", cfg.norm_eps, cfg.param_dtype, name=name)
    is_global = self.attention_type == "global"
    attn = Attention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        embed_dim=cfg.embed_dim, query_pre_attn_scalar=cfg.query_pre_attn_scalar,
        attention_type=self.attention_type, sliding_window_size=cfg.sliding_window_size,
        attn_logits_soft_cap=cfg.attn_logits_soft_cap, use_qk_norm=cfg.use_qk_norm,
        rope_base=cfg.rope_base_global if is_global else cfg.rope_base_local,
        rope_scale=cfg.rope_scale_global if is_global else 1.0,
        norm_eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="attn")
    # Each sublayer picks its own sites from the layer's paths.
    h, cache = attn(norm("pre_attention_norm")(x), positions, mask, cache, cache_index, lora)
    if cfg.use_post_attn_norm:
      h = norm("post_attention_norm")(h)
    x = x + h
    h = layers.FeedForward(cfg.embed_dim, cfg.hidden_dim, cfg.dtype, cfg.param_dtype,
                           name="mlp")(norm("pre_ffw_norm")(x), lora)
    if cfg.use_post_ffw_norm:
      h = norm("post_ffw_norm")(h)
    return x + h, cache


class Transformer(nn.Module):
  """Gemma decoder. Returns logits (or final hidden states) and the updated KV cache."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, attention_mask: Array,
               cache: Cache | None = None, return_hidden: bool = False,
               lora: LowRankPaths | None = None) -> tuple[Array, Cache | None]:
    """Runs the decoder.

    Args:
      tokens: [B, T] int token ids.
      positions: [B, T] int RoPE positions.
      attention_mask: [B, T, S] bool, which key slots each query may see (S = T without a
        cache, the cache length with one).
      cache: KV cache from `init_cache`; new keys/values are written at `cache["index"]`.
      return_hidden: return the final-normed hidden states [B, T, D] instead of logits, for
        scalar heads (reward, value) that do not need the vocabulary projection.
      lora: low-rank paths added to the projections (unmerged LoRA; `alignment.lora`
        builds them); the parameters stay the plain decoder tree.
    """
    cfg = self.config
    check_paths(lora, cfg.num_layers)
    lora = lora or {}
    embedder = layers.Embedder(cfg.vocab_size, cfg.embed_dim, cfg.dtype, cfg.param_dtype,
                               name="embedder")
    x = embedder.encode(tokens)
    new_cache = None if cache is None else {"index": cache["index"] + tokens.shape[1]}
    for i, kind in enumerate(cfg.attention_types):
      name = f"layer_{i}"
      layer_cache = None if cache is None else cache[name]
      index = None if cache is None else cache["index"]
      x, layer_cache = Block(cfg, kind, name=name)(x, positions, attention_mask, layer_cache,
                                                   index, lora.get(name))
      if cache is not None:
        new_cache[name] = layer_cache
    x = layers.RMSNorm("embed", cfg.norm_eps, cfg.param_dtype, name="final_norm")(x)
    if return_hidden:
      return x, new_cache
    logits = layers.soft_cap(embedder.decode(x).astype(jnp.float32), cfg.final_logit_soft_cap)
    return logits, new_cache


def _dummy_inputs(batch: int = 1, length: int = 1):
  tokens = jnp.zeros((batch, length), jnp.int32)
  positions = jnp.zeros((batch, length), jnp.int32)
  mask = jnp.ones((batch, length, length), bool)
  return tokens, positions, mask


def init_params(config: ModelConfig, rng: Array) -> Params:
  """Random-initialised parameters (plain arrays, logical-axis boxes removed)."""
  return _init_params(config, rng)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(config: ModelConfig, rng: Array) -> Params:
  # Module level, keyed on the (frozen, hashable) config: each config compiles once per
  # process, not once per call.
  return nn.unbox(Transformer(config).init(rng, *_dummy_inputs()))["params"]


def param_logical_axes(config: ModelConfig) -> Params:
  """The logical axis names of every parameter, as a tree of PartitionSpecs (no allocation)."""
  abstract = jax.eval_shape(lambda: Transformer(config).init(jax.random.key(0),
                                                             *_dummy_inputs()))
  return nn.get_partition_spec(abstract)["params"]


def param_shapes(config: ModelConfig) -> Params:
  """Shape/dtype structs of every parameter (no allocation)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def init_cache(config: ModelConfig, batch_size: int, cache_length: int,
               dtype: str | None = None) -> Cache:
  """An empty KV cache for `cache_length` slots per sequence."""
  dtype = dtype or config.dtype
  shape = (batch_size, cache_length, config.num_kv_heads, config.head_dim)
  cache: Cache = {"index": jnp.zeros((), jnp.int32)}
  for i in range(config.num_layers):
    cache[f"layer_{i}"] = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  return cache


def forward(config: ModelConfig, params: Params, tokens: Array, positions: Array,
            attention_mask: Array, cache: Cache | None = None,
            return_hidden: bool = False,
            lora: LowRankPaths | None = None) -> tuple[Array, Cache | None]:
  """Functional form of `Transformer.__call__` over a plain parameter tree."""
  return Transformer(config).apply({"params": params}, tokens, positions, attention_mask,
                                   cache, return_hidden, lora)
