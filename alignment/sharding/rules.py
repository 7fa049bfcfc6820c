"""THE table mapping logical axis names onto mesh axes, and helpers that apply it.

Parameters carry logical names (`alignment.model.param_logical_axes`); this is the only place
that decides how those names land on the (data, fsdp, tensor) mesh:

* weights are split along `embed` over `fsdp` (ZeRO-3 style: each device holds a slice of
  every matrix, all-gathered just in time), and along their "many heads / wide" axis
  (`vocab`, `heads`, `kv_heads`, `mlp`) over `tensor` (Megatron style);
* activations split `batch` over both `data` and `fsdp`, since fsdp devices see different
  examples too; `length` and the hidden feature axis (`act_embed`) stay whole; the decoder's
  named activations (`alignment.model.activations`) get these as sharding constraints inside
  every train step (`activation_constraints`).

A dimension that its mesh axes do not divide (e.g. one KV head on a tensor axis of 4) is
replicated instead of failing: that costs memory only on that small tensor.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alignment import model
from alignment.model import activations

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # Activations (the names of `alignment.model.activations`; their heads, kv_heads, mlp and
    # vocab axes follow the parameter rules below, so tensor parallelism splits both alike).
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
)


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def _axis_size(mesh: Mesh, entry) -> int:
  if entry is None:
    return 1
  names = entry if isinstance(entry, tuple) else (entry,)
  size = 1
  for name in names:
    size *= mesh.shape[name]
  return size


def fit_to_shape(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Replaces each mesh-axis entry that does not divide its dimension by None (replicate)."""
  entries = tuple(spec) + (None,) * (len(shape) - len(spec))
  fitted = [e if dim % _axis_size(mesh, e) == 0 else None for e, dim in zip(entries, shape)]
  return PartitionSpec(*fitted)


def logical_to_shardings(logical_specs: Any, shapes: Any, mesh: Mesh,
                         rules=LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a tree of logical PartitionSpecs, falling back to replication on
  dimensions the mesh does not divide.

  `shapes` is a matching tree of arrays or `jax.ShapeDtypeStruct`s (only `.shape` is read).
  """
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, fit_to_shape(spec, x.shape, mesh)),
      mesh_specs, shapes, is_leaf=_is_spec)


def param_shardings(model_config, mesh: Mesh, shapes: Any = None) -> Any:
  """NamedShardings of every parameter of an `alignment.model` config on `mesh`."""
  shapes = model.param_shapes(model_config) if shapes is None else shapes
  return logical_to_shardings(model.param_logical_axes(model_config), shapes, mesh)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, ...] input array: rows split over the `batch` rule's mesh axes."""
  spec = nn.logical_to_mesh(PartitionSpec("batch", *([None] * (ndim - 1))), LOGICAL_AXIS_RULES)
  return NamedSharding(mesh, spec)


def batch_shardings(mesh: Mesh, batch: Any) -> Any:
  """Shardings for a tree of [batch, ...] arrays; checks the batch size divides the mesh."""
  def one(x):
    sharding = batch_sharding(mesh, x.ndim)
    parts = _axis_size(mesh, sharding.spec[0])
    if x.ndim == 0 or x.shape[0] % parts:
      raise ValueError(f"batch array of shape {tuple(x.shape)}: the leading (batch) dimension "
                       f"must be divisible by data*fsdp = {parts}")
    return sharding
  return jax.tree.map(one, batch)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def activation_sharding(mesh: Mesh, names: tuple[str | None, ...], shape: tuple[int, ...],
                        rules=LOGICAL_AXIS_RULES) -> NamedSharding:
  """Where an activation with logical `names` lives on `mesh` (undivided dims replicated)."""
  spec = nn.logical_to_mesh_axes(names, rules)
  return NamedSharding(mesh, fit_to_shape(spec, shape, mesh))


@contextlib.contextmanager
def activation_constraints(mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Iterator[None]:
  """While tracing inside the block, the decoder's named activations are constrained to the
  shardings the rules table gives them on `mesh`, so XLA's propagation does not have to guess
  (e.g. keep the MLP hidden split over `tensor` between the two matmuls)."""
  def constrain(x, names):
    return jax.lax.with_sharding_constraint(x, activation_sharding(mesh, names, x.shape, rules))
  with activations.constrained_by(constrain):
    yield


def with_activation_constraints(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` traced under `activation_constraints(mesh)` (wrap before `jax.jit`)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activation_constraints(mesh):
      return fn(*args, **kwargs)
  return wrapped
