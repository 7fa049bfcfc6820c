"""Building blocks shared by every Gemma generation: RMSNorm, RoPE, embedder, gated FFN.

Every parameter is created with logical axis names (see `alignment.sharding.rules`), so one
rule table decides how it is laid out on a device mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignment.model import activations
from alignment.model.low_rank import LowRank, add_low_rank

Array = jax.Array


def param_with_axes(module: nn.Module, name: str, init, shape, axes, dtype):
  """Declares a parameter tagged with logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  """RMS normalisation with Gemma's `(1 + scale)` parametrisation, computed in float32."""

  axis_name: str = "embed"
  eps: float = 1e-6
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = param_with_axes(self, "scale", nn.initializers.zeros_init(), (x.shape[-1],),
                            (self.axis_name,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def apply_rope(x: Array, positions: Array, base: float, scale: float = 1.0) -> Array:
  """Rotary embedding on [B, T, N, H] with the half-split layout (first half pairs with second).

  `positions` is [B, T]; positions are divided by `scale` (linear RoPE scaling).
  """
  head_dim = x.shape[-1]
  fraction = 2 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim
  timescale = base**fraction
  angles = (positions[..., None].astype(jnp.float32) / scale) / timescale  # [B, T, H/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# Random initialisation of the embedding table (the stddev of flax's `normal()`, which the
# reference Gemma code uses). With tied embeddings and the sqrt(D) input scale, stddev 1 made a
# random model copy its input token with a logit margin of about D (eval loss ~57 nats over a
# 600-piece vocabulary, entropy ~1e-10); 0.01 gives near-uniform outputs (loss ~ log V).
# Loaded checkpoints replace the table, so only random models see this.
EMBED_INIT_STDDEV = 0.01


class Embedder(nn.Module):
  """Token embedding table, also used (tied) as the output projection."""

  vocab_size: int
  embed_dim: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  def setup(self):
    self.input_embedding = param_with_axes(
        self, "input_embedding", nn.initializers.normal(stddev=EMBED_INIT_STDDEV),
        (self.vocab_size, self.embed_dim), ("vocab", "embed"), self.param_dtype)

  def encode(self, tokens: Array) -> Array:
    """[B, T] ids -> [B, T, D], scaled by sqrt(D) as Gemma does."""
    x = jnp.take(self.input_embedding, tokens, axis=0).astype(self.dtype)
    return x * jnp.sqrt(jnp.asarray(self.embed_dim, jnp.float32)).astype(self.dtype)

  def decode(self, x: Array) -> Array:
    """[B, T, D] hidden states -> [B, T, V] logits (tied weights)."""
    return jnp.einsum("btd,vd->btv", x, self.input_embedding.astype(self.dtype))


class FeedForward(nn.Module):
  """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

  embed_dim: int
  hidden_dim: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array, lora: dict[str, LowRank] | None = None) -> Array:
    """`lora` maps sites ("gate", "up", "down" here) to low-rank paths on those projections."""
    lora = lora or {}
    init = nn.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,))
    gating = param_with_axes(self, "gating_einsum", init, (2, self.embed_dim, self.hidden_dim),
                             (None, "embed", "mlp"), self.param_dtype).astype(self.dtype)
    linear = param_with_axes(self, "linear", nn.initializers.lecun_normal(),
                             (self.hidden_dim, self.embed_dim), ("mlp", "embed"),
                             self.param_dtype).astype(self.dtype)
    gate = add_low_rank(jnp.einsum("btd,df->btf", x, gating[0]), x, lora.get("gate"))
    up = add_low_rank(jnp.einsum("btd,df->btf", x, gating[1]), x, lora.get("up"))
    hidden = activations.constrain(nn.gelu(gate, approximate=True) * up,
                                   activations.MLP_HIDDEN)
    return add_low_rank(jnp.einsum("btf,fd->btd", hidden, linear), hidden, lora.get("down"))


def soft_cap(x: Array, cap: float | None) -> Array:
  """cap * tanh(x / cap): bounds logits smoothly (Gemma 2)."""
  if cap is None:
    return x
  return jnp.tanh(x / cap) * cap
