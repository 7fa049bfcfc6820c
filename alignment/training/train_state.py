"""The training state pytree and its sharded creation.

The state is created inside `jax.jit` with `out_shardings`, so each device materialises only
its own slices of the parameters and optimizer moments: a model larger than one device's
memory never exists whole anywhere.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from alignment.sharding import replicated


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position."""

  step: jax.Array  # int32 scalar: train-step calls so far (micro-batches under accumulation)
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data (plain array, so checkpoints need no key support)


def raw_key(rng: jax.Array) -> jax.Array:
  """uint32 key data of a typed or raw PRNG key."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  return rng


def train_state_shardings(abstract_state: TrainState, param_shardings: Any,
                          mesh: Mesh) -> TrainState:
  """Shardings for a state: an optimizer leaf shaped like a parameter (Adam moments,
  accumulated gradients) follows that parameter; counters and the rng are replicated.

  A leaf is matched to the parameter whose key path ends its own key path (optax nests the
  parameter tree inside its state, e.g. `...mu['layer_0']['mlp']['linear']`); this works
  through `masked`/`multi_transform`, where `optax.tree_map_params` does not.
  """
  by_path = {path: s for path, s in jax.tree_util.tree_leaves_with_path(param_shardings)}
  shapes = {path: x.shape for path, x in
            jax.tree_util.tree_leaves_with_path(abstract_state.params)}

  def opt_leaf(path, leaf):
    for start in range(len(path)):
      suffix = path[start:]
      if suffix in by_path and shapes[suffix] == leaf.shape:
        return by_path[suffix]
    return replicated(mesh)

  opt_shardings = jax.tree_util.tree_map_with_path(opt_leaf, abstract_state.opt_state)
  return TrainState(step=replicated(mesh), params=param_shardings, opt_state=opt_shardings,
                    rng=replicated(mesh))


def _with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _state_fn(init_params_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
              rng: jax.Array) -> Callable[[], TrainState]:
  params_rng, state_rng = jax.random.split(rng)

  def init() -> TrainState:
    params = init_params_fn(params_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=raw_key(state_rng))
  return init


def abstract_train_state(init_params_fn: Callable[[jax.Array], Any],
                         tx: optax.GradientTransformation, mesh: Mesh,
                         param_shardings: Any) -> TrainState:
  """Shape/dtype/sharding structs of the state (no allocation): a restore or AOT target."""
  init = _state_fn(init_params_fn, tx, jax.random.key(0))
  abstract = jax.eval_shape(init)
  return _with_shardings(abstract, train_state_shardings(abstract, param_shardings, mesh))


def init_train_state(init_params_fn: Callable[[jax.Array], Any],
                     tx: optax.GradientTransformation, rng: jax.Array, mesh: Mesh,
                     param_shardings: Any) -> TrainState:
  """A fresh state, initialised directly into its shards."""
  init = _state_fn(init_params_fn, tx, rng)
  abstract = jax.eval_shape(init)
  shardings = train_state_shardings(abstract, param_shardings, mesh)
  return jax.jit(init, out_shardings=shardings)()


def train_state_from_params(params: Any, tx: optax.GradientTransformation, rng: jax.Array,
                            mesh: Mesh, param_shardings: Any) -> TrainState:
  """A state around existing (e.g. loaded) parameters, placed onto `param_shardings`."""
  params = jax.device_put(params, param_shardings)

  def init(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                      rng=raw_key(rng))
  abstract = jax.eval_shape(init, params)
  shardings = train_state_shardings(abstract, param_shardings, mesh)
  return jax.jit(init, in_shardings=(param_shardings,), out_shardings=shardings)(params)


def state_shardings_of(state: TrainState) -> TrainState:
  """The shardings a (concrete or abstract) state's leaves carry."""
  return jax.tree.map(lambda x: x.sharding, state)
