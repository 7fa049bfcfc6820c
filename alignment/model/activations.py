"""Named activation axes: the decoder marks its large activations with logical axis names, and
whoever runs it under a mesh decides what the names mean.

The model layer cannot know the mesh or the rules table (`alignment.sharding.rules`, a layer
above), so `constrain(x, names)` calls the function installed by `constrained_by` for the
current trace, and is the identity when none is installed (one device, a plain `jax.jit`,
tests). The installer is `sharding.activation_constraints(mesh)`, which turns the names into
`with_sharding_constraint`s from the same table that places the parameters.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import jax

# The names the decoder uses, by activation. `act_embed` is separate from the parameters'
# `embed` (which FSDP splits): a hidden state's feature axis stays whole under FSDP.
RESIDUAL = ("batch", "length", "act_embed")          # [B, T, D] between sublayers
QUERIES = ("batch", "length", "heads", "head_dim")   # [B, T, N, H] queries, attention output
KEYS = ("batch", "length", "kv_heads", "head_dim")   # [B, S, K, H] keys and values
MLP_HIDDEN = ("batch", "length", "mlp")              # [B, T, F] GeGLU gate/up product
LOGITS = ("batch", "length", "vocab")                # [B, T, V]

Constrain = Callable[[jax.Array, tuple[str | None, ...]], jax.Array]
_CURRENT: contextvars.ContextVar[Constrain | None] = contextvars.ContextVar(
    "activation_constraint", default=None)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """`x` with the sharding its logical `names` map to, or `x` itself outside `constrained_by`."""
  fn = _CURRENT.get()
  if fn is None:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"activation names {names} do not match an array of shape {x.shape}")
  return fn(x, names)


@contextlib.contextmanager
def constrained_by(fn: Constrain | None) -> Iterator[None]:
  """Installs `fn` for the code traced inside the block (None: no constraints)."""
  token = _CURRENT.set(fn)
  try:
    yield
  finally:
    _CURRENT.reset(token)
