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

Two execution choices in the config leave that tree alone: `remat` wraps each block in
`nn.remat`, and `scan_layers` runs the layers as a `lax.scan` over repetitions of the
attention pattern, stacking the `layer_{i}` leaves inside the jitted call (`_scan_layers`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignment.model import activations, layers
from alignment.model.attention import Attention, LayerCache
from alignment.model.config import AttentionType, ModelConfig
from alignment.model.low_rank import LowRank, check_paths

Array = jax.Array
Params = Any
Cache = dict[str, Any]  # {"index": int32[], "layer_{i}": LayerCache}
# Optional low-rank paths (unmerged LoRA): {"layer_{i}": {site: LowRank}}, see `low_rank`.
LowRankPaths = dict[str, dict[str, LowRank]]

# jax.checkpoint policies behind `ModelConfig.remat` ("none" applies no remat at all).
_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
  config: ModelConfig
  attention_type: AttentionType

  @nn.compact
  def __call__(self, x, positions, mask, cache: LayerCache | None, cache_index,
               lora: dict[str, LowRank] | None = None):
    cfg = self.config
    norm = lambda name: layers.RMSNorm("embed", cfg.norm_eps, cfg.param_dtype, name=name)
    x = activations.constrain(x, activations.RESIDUAL)
    is_global = self.attention_type == "global"
    attn = Attention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        embed_dim=cfg.embed_dim, query_pre_attn_scalar=cfg.query_pre_attn_scalar,
        attention_type=self.attention_type, sliding_window_size=cfg.sliding_window_size,
        attn_logits_soft_cap=cfg.attn_logits_soft_cap, use_qk_norm=cfg.use_qk_norm,
        rope_base=cfg.rope_base_global if is_global else cfg.rope_base_local,
        rope_scale=cfg.rope_scale_global if is_global else 1.0,
        norm_eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        attention_impl=cfg.attention_impl, name="attn")
    # Each sublayer picks its own sites from the layer's paths.
    h, cache = attn(norm("pre_attention_norm")(x), positions, mask, cache, cache_index, lora)
    if cfg.use_post_attn_norm:
      h = norm("post_attention_norm")(h)
    x = activations.constrain(x + h, activations.RESIDUAL)
    h = layers.FeedForward(cfg.embed_dim, cfg.hidden_dim, cfg.dtype, cfg.param_dtype,
                           name="mlp")(norm("pre_ffw_norm")(x), lora)
    if cfg.use_post_ffw_norm:
      h = norm("post_ffw_norm")(h)
    return x + h, cache


def block_class(config: ModelConfig, prevent_cse: bool = True) -> type[nn.Module]:
  """`Block`, wrapped in `nn.remat` with the policy `config.remat` names.

  Inside a scan pass prevent_cse=False: the loop already keeps XLA from merging the
  recomputation with the forward pass, and the guard would only cost speed.
  """
  if config.remat == "none":
    return Block
  return nn.remat(Block, policy=_REMAT_POLICIES[config.remat], prevent_cse=prevent_cse)


def _stack(trees: list[Any]) -> Any:
  """Equal-structure trees -> one tree whose leaves are stacked on a new leading axis [R, ...]."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _scan_layers(cfg: ModelConfig, params: Params, x: Array, positions: Array, mask: Array,
                 cache: Cache | None, lora: LowRankPaths) -> tuple[Array, dict[str, Any]]:
  """The decoder layers as a `lax.scan` over R = num_layers // P repetitions of the pattern.

  The scan body is one period of P blocks, so tracing and compiling cost P blocks, not
  num_layers. Parameters, cache and low-rank paths arrive in their per-layer `layer_{i}`
  trees; the leaves of layers j, j + P, j + 2P, ... are stacked to [R, ...] here, inside the
  caller's jit (the backward of a stack is a slice), so loaders, checkpoints and adapters never
  see a scanned layout. Layers after the last full period run unrolled.

  Returns x [B, T, D] and the new per-layer caches {"layer_{i}": LayerCache} ({} without a
  cache). With a cache, each call stacks and unstacks the whole KV cache (a copy of it):
  right for a prefill, wasteful for one-token decoding, where scan_layers=False is cheaper.
  """
  period = len(cfg.attention_pattern)
  reps = cfg.num_layers // period
  name = lambda i: f"layer_{i}"
  index = None if cache is None else cache["index"]
  layer_cache = lambda i: None if cache is None else cache[name(i)]
  for j in range(period):
    found = {jax.tree.structure(lora.get(name(r * period + j))) for r in range(reps)}
    if len(found) > 1:
      raise NotImplementedError(
          "scan_layers=True needs the same low-rank sites on every layer of a pattern "
          f"position; layers {j}, {j + period}, ... differ (adapters on only some layers, "
          "e.g. lora.last_layers): use scan_layers=False for them")

  def run_block(kind: AttentionType, prevent_cse: bool, p, h, c, path):
    block = block_class(cfg, prevent_cse)(cfg, kind, parent=None)
    return block.apply({"params": p}, h, positions, mask, c, index, path)

  def body(h, xs):
    p, c, paths = xs
    out = []
    for j, kind in enumerate(cfg.attention_pattern):
      h, cj = run_block(kind, False, p[j], h, c[j], paths[j])
      out.append(cj)
    return h, tuple(out)

  new_cache: dict[str, Any] = {}
  if reps:
    per_position = lambda get: tuple(_stack([get(r * period + j) for r in range(reps)])
                                     for j in range(period))
    xs = (per_position(lambda i: params[name(i)]),
          per_position(layer_cache),
          per_position(lambda i: lora.get(name(i))))
    x, caches = jax.lax.scan(body, x, xs)
    if cache is not None:
      for r in range(reps):
        for j in range(period):
          new_cache[name(r * period + j)] = jax.tree.map(lambda a: a[r], caches[j])
  for i in range(reps * period, cfg.num_layers):
    x, c = run_block(cfg.attention_types[i], True, params[name(i)], x, layer_cache(i),
                     lora.get(name(i)))
    if cache is not None:
      new_cache[name(i)] = c
  return x, new_cache


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
    x = activations.constrain(embedder.encode(tokens), activations.RESIDUAL)
    new_cache = None if cache is None else {"index": cache["index"] + tokens.shape[1]}
    if cfg.scan_layers and not self.is_initializing():
      # Initialisation runs the unrolled loop below, so both modes create the same tree.
      x, layer_caches = _scan_layers(cfg, nn.unbox(self.variables["params"]), x, positions,
                                     attention_mask, cache, lora)
      if cache is not None:
        new_cache.update(layer_caches)
    else:
      block = block_class(cfg)
      for i, kind in enumerate(cfg.attention_types):
        name = f"layer_{i}"
        layer_cache = None if cache is None else cache[name]
        index = None if cache is None else cache["index"]
        x, layer_cache = block(cfg, kind, name=name)(x, positions, attention_mask, layer_cache,
                                                     index, lora.get(name))
        if cache is not None:
          new_cache[name] = layer_cache
    x = layers.RMSNorm("embed", cfg.norm_eps, cfg.param_dtype, name="final_norm")(x)
    if return_hidden:
      return x, new_cache
    logits = activations.constrain(embedder.decode(x), activations.LOGITS)
    return layers.soft_cap(logits.astype(jnp.float32), cfg.final_logit_soft_cap), new_cache


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
               dtype: str | None = None, ring_local: bool = False) -> Cache:
  """An empty KV cache for `cache_length` slots per sequence.

  `ring_local`: local (sliding-window) layers keep a ring of min(sliding_window_size,
  cache_length) entries instead, since no query sees further back; the attention mask passed
  to the decoder still spans all `cache_length` slots (global layers need them).
  """
  dtype = dtype or config.dtype
  cache: Cache = {"index": jnp.zeros((), jnp.int32)}
  for i, kind in enumerate(config.attention_types):
    length = cache_length
    if ring_local and kind == "local":
      length = min(cache_length, config.sliding_window_size)
    shape = (batch_size, length, config.num_kv_heads, config.head_dim)
    cache[f"layer_{i}"] = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  return cache


def forward(config: ModelConfig, params: Params, tokens: Array, positions: Array,
            attention_mask: Array, cache: Cache | None = None,
            return_hidden: bool = False,
            lora: LowRankPaths | None = None) -> tuple[Array, Cache | None]:
  """Functional form of `Transformer.__call__` over a plain parameter tree."""
  return Transformer(config).apply({"params": params}, tokens, positions, attention_mask,
                                   cache, return_hidden, lora)
