"""Optimizer chain: schedules, frozen parameters, accumulation, clipping, weight decay."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignment.training import optimizer as opt_lib
from alignment.training.losses import next_token_cross_entropy

PARAMS = {"embedder": {"input_embedding": jnp.ones((4, 3))},
          "layer_0": {"mlp": {"linear": jnp.ones((3, 2))}, "norm": {"scale": jnp.ones((3,))}}}


def test_warmup_cosine_schedule_matches_closed_form():
  cfg = opt_lib.OptimizerConfig(learning_rate=1.0, warmup_steps=10, total_steps=110,
                                end_learning_rate_ratio=0.1)
  schedule = opt_lib.make_schedule(cfg)
  for step in (0, 5, 10, 35, 60, 110, 200):
    if step < 10:
      expected = step / 10
    else:
      t = min(step - 10, 100) / 100
      expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-6), step


def test_warmup_linear_and_constant_schedules():
  linear = opt_lib.make_schedule(opt_lib.OptimizerConfig(
      learning_rate=2.0, schedule="linear", warmup_steps=4, total_steps=14))
  assert [float(linear(s)) for s in (0, 2, 4, 9, 14, 20)] == pytest.approx(
      [0.0, 1.0, 2.0, 1.0, 0.0, 0.0])
  constant = opt_lib.make_schedule(opt_lib.OptimizerConfig(
      learning_rate=2.0, schedule="constant", warmup_steps=4, total_steps=14))
  assert [float(constant(s)) for s in (2, 4, 100)] == pytest.approx([1.0, 2.0, 2.0])
  cfg = opt_lib.OptimizerConfig(learning_rate=2.0, schedule="linear", warmup_steps=4,
                                total_steps=14, grad_accum_steps=2)
  assert opt_lib.learning_rate_at(cfg, 4) == pytest.approx(1.0)  # 4 micro-steps = 2 updates


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="schedule='step'"):
    opt_lib.OptimizerConfig(schedule="step")
  with pytest.raises(ValueError, match="grad_accum_steps=0"):
    opt_lib.OptimizerConfig(grad_accum_steps=0)
  with pytest.raises(ValueError, match="warmup_steps"):
    opt_lib.OptimizerConfig(warmup_steps=10, total_steps=5)


def test_frozen_parameters_get_no_state_and_no_update():
  cfg = opt_lib.OptimizerConfig(learning_rate=0.1, frozen=("embedder/",), grad_accum_steps=2)
  tx = opt_lib.make_optimizer(cfg)
  state = tx.init(PARAMS)
  shapes = [x.shape for x in jax.tree.leaves(state)]
  assert (4, 3) not in shapes  # neither Adam moments nor an accumulator for the embedding
  assert shapes.count((3, 2)) == 3  # mu, nu, accumulated gradient of the trainable matrix
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  params = PARAMS
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params["embedder"]["input_embedding"], 1.0)
  assert float(jnp.abs(params["layer_0"]["mlp"]["linear"] - 1).max()) > 0.01


def test_frozen_pattern_that_matches_nothing_is_an_error():
  tx = opt_lib.make_optimizer(opt_lib.OptimizerConfig(frozen=("embeder",)))
  with pytest.raises(ValueError, match="'embeder' matches no parameter"):
    tx.init(PARAMS)


def test_accumulation_equals_one_step_on_the_mean_gradient():
  base = dict(learning_rate=0.1, warmup_steps=0, schedule="constant", max_grad_norm=None)
  accumulated = opt_lib.make_optimizer(opt_lib.OptimizerConfig(grad_accum_steps=2, **base))
  plain = opt_lib.make_optimizer(opt_lib.OptimizerConfig(**base))
  g1 = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)
  g2 = jax.tree.map(lambda p: jnp.full_like(p, -0.1), PARAMS)
  state = accumulated.init(PARAMS)
  updates, state = accumulated.update(g1, state, PARAMS)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))  # no update yet
  updates, state = accumulated.update(g2, state, PARAMS)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  expected, _ = plain.update(mean, plain.init(PARAMS), PARAMS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)


def test_clipping_bounds_the_global_norm():
  # With eps=1, Adam is not scale invariant: only clipping makes g and 10*g step alike.
  base = dict(learning_rate=0.1, warmup_steps=0, schedule="constant", eps=1.0)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), PARAMS)
  big = jax.tree.map(lambda g: 10 * g, grads)

  def first_update(cfg, g):
    tx = opt_lib.make_optimizer(cfg)
    return tx.update(g, tx.init(PARAMS), PARAMS)[0]

  clipped = opt_lib.OptimizerConfig(max_grad_norm=1.0, **base)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
               first_update(clipped, grads),
               first_update(clipped, big))
  unclipped = opt_lib.OptimizerConfig(max_grad_norm=None, **base)
  a = first_update(unclipped, grads)["layer_0"]["mlp"]["linear"]
  b = first_update(unclipped, big)["layer_0"]["mlp"]["linear"]
  assert not np.allclose(a, b)


def test_weight_decay_applies_to_matrices_only():
  tx = opt_lib.make_optimizer(opt_lib.OptimizerConfig(
      learning_rate=0.5, warmup_steps=0, schedule="constant", weight_decay=0.1))
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates["layer_0"]["mlp"]["linear"], -0.5 * 0.1, rtol=1e-6)
  np.testing.assert_array_equal(updates["layer_0"]["norm"]["scale"], 0.0)


def test_next_token_cross_entropy_matches_numpy_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 5))
  weights = (rng.random((2, 5)) > 0.4).astype(np.float32)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  loss, count = next_token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                         jnp.asarray(weights))
  assert float(count) == weights.sum()
  assert float(loss) == pytest.approx((nll * weights).sum() / weights.sum(), rel=1e-5)
  empty, zero = next_token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                         jnp.zeros((2, 5)))
  assert float(empty) == 0.0 and float(zero) == 0.0
  with pytest.raises(ValueError, match="disagree"):
    next_token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets[:, :4]))
