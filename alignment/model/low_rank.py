"""An optional additive low-rank path on a projection: the decoder's hook for unmerged LoRA.

Every projection of the decoder computes `y = x W` and, when the caller hands it a `LowRank`
for that site, adds `scale * dropout(x) A B`. The decoder only knows this arithmetic; which
sites get a path, how A and B are initialised, saved or merged, lives in `alignment.lora`.

Why a call argument rather than merged weights: with `W` held fixed, the gradient w.r.t. a
merged weight is the full-size dL/dW (as costly as full fine-tuning), while the unmerged path
differentiates only the rank-r matmuls. Why a call argument rather than a variable
collection or a subclass: the paths are inputs of one call (they change every step and carry
a dropout key), so `forward(..., lora=paths)` keeps the decoder a pure function of
(params, paths, tokens) and the parameter tree identical with or without adapters.

Site names, per layer: attention "q", "k", "v" (input: the normed hidden state [B, T, D]),
"o" (input: the attention output [B, T, N, H]); feed-forward "gate", "up" (input [B, T, D])
and "down" (input: the gated activation [B, T, F]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

SITES = ("q", "k", "v", "o", "gate", "up", "down")


@struct.dataclass
class LowRank:
  """delta(x) = scale * dropout(x) . a . b, contracting all of a's leading dims with x's
  trailing dims: a is [*input feature dims, r], b is [r, *output dims]."""

  a: Array
  b: Array
  scale: float = struct.field(pytree_node=False, default=1.0)
  dropout: float = struct.field(pytree_node=False, default=0.0)
  rng: Array | None = None  # dropout key; None (evaluation) or dropout == 0 turns it off

  def __call__(self, x: Array) -> Array:
    a, b = self.a.astype(x.dtype), self.b.astype(x.dtype)
    if self.rng is not None and self.dropout > 0:
      keep = jax.random.bernoulli(self.rng, 1.0 - self.dropout, x.shape)
      x = jnp.where(keep, x / jnp.asarray(1.0 - self.dropout, x.dtype), jnp.zeros((), x.dtype))
    h = jnp.tensordot(x, a, axes=a.ndim - 1)  # [..., r]: the only activation-sized cost
    return jnp.tensordot(h * jnp.asarray(self.scale, h.dtype), b, axes=1)


def add_low_rank(y: Array, x: Array, path: LowRank | None) -> Array:
  """`y` plus the site's low-rank update of its input `x` (unchanged when there is none)."""
  return y if path is None else y + path(x).astype(y.dtype)


def check_paths(paths: dict | None, num_layers: int) -> None:
  """Rejects a paths tree naming a layer or site the decoder does not have."""
  if paths is None:
    return
  layers = {f"layer_{i}" for i in range(num_layers)}
  for layer, sites in paths.items():
    if layer not in layers:
      raise ValueError(f"low-rank paths name {layer!r}; the model has layer_0..layer_"
                       f"{num_layers - 1}")
    unknown = set(sites) - set(SITES)
    if unknown:
      raise ValueError(f"low-rank paths of {layer} name unknown site(s) {sorted(unknown)}; "
                       f"known: {', '.join(SITES)}")
