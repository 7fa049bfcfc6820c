"""A pure train step built from any loss function, and its sharded, donating jit."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, Sharding

from alignment import sharding
from alignment.training.train_state import TrainState

Array = jax.Array
# loss_fn(params, batch, rng) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Any, Array], tuple[Array, dict[str, Array]]]
TrainStep = Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]]


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Casts the floating-point leaves of `tree` to `dtype` (integer leaves are kept)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    compute_dtype: str | None = None) -> TrainStep:
  """`step(state, batch) -> (state, metrics)`: one gradient step (or micro-step).

  With `compute_dtype` (e.g. "bfloat16") the parameters are cast inside the differentiated
  function, so the forward/backward run in that dtype while gradients, optimizer moments and
  the master weights stay in the parameters' own dtype (float32).

  The per-step rng is `fold_in(state.rng, state.step)`: a function of the step alone, so a
  resumed run draws exactly the numbers an uninterrupted one would.
  """
  def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Array]]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def compute_loss(params):
      if compute_dtype is not None:
        params = cast_floating(params, compute_dtype)
      return loss_fn(params, batch, rng)

    (loss, aux), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss.astype(jnp.float32), "grad_norm": optax.tree.norm(grads), **aux}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return step


def jit_train_step(step: TrainStep, state_shardings: TrainState, batch_shardings: Any,
                   metrics_sharding: Sharding) -> Callable:
  """Jits `step` with explicit in/out shardings; the input state's buffers are donated
  (reused for the output state), so a step needs no second copy of params and moments. The
  model's named activations are constrained on the mesh of `metrics_sharding` (the rules
  table's activation entries)."""
  if isinstance(metrics_sharding, NamedSharding):
    step = sharding.with_activation_constraints(step, metrics_sharding.mesh)
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, metrics_sharding), donate_argnums=0)
