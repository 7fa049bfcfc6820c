"""Logits only at loss positions: the same loss and gradients, a fraction of the FLOPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import model as M
from alignment.model.layers import soft_cap
from alignment.training import losses

B, T, D, V = 2, 24, 16, 97


def response_only(prompt_lengths):
  """Weights [B, T]: 0 on each row's prompt, 1 on its response."""
  return (jnp.arange(T)[None] >= jnp.asarray(prompt_lengths)[:, None]).astype(jnp.float32)


def problem():
  keys = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(keys[0], (B, T, D)), jax.random.normal(keys[1], (V, D)),
          jax.random.randint(keys[2], (B, T), 0, V))


@pytest.mark.parametrize("cap,chunk", [(None, None), (5.0, None), (5.0, 4)])
def test_gathered_equals_full_loss_and_gradients(cap, chunk):
  hidden, embedding, targets = problem()
  weights = response_only([10, 17])  # 14 + 7 = 21 positions with loss

  def full(h, e):
    logits = soft_cap(jnp.einsum("btd,vd->btv", h, e), cap)
    return losses.next_token_cross_entropy(logits, targets, weights)[0]

  want, want_grads = jax.jit(jax.value_and_grad(full, (0, 1)))(hidden, embedding)
  for max_positions in (21, 32):  # exactly enough, and spare rows
    gathered = lambda h, e: losses.gathered_next_token_cross_entropy(
        h, e, targets, weights, max_positions, cap, chunk)[0]
    got, got_grads = jax.jit(jax.value_and_grad(gathered, (0, 1)))(hidden, embedding)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(got_grads, want_grads):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  _, count, dropped = losses.gathered_next_token_cross_entropy(
      hidden, embedding, targets, weights, 21)
  assert float(count) == 21.0 and int(dropped) == 0


def test_too_many_loss_positions_give_nan_and_the_excess():
  hidden, embedding, targets = problem()
  loss, _, dropped = losses.gathered_next_token_cross_entropy(
      hidden, embedding, targets, response_only([10, 17]), 16)
  assert np.isnan(float(loss)) and int(dropped) == 5
  with pytest.raises(ValueError, match="max_positions"):
    losses.gathered_next_token_cross_entropy(hidden, embedding, targets, targets, 0)


def test_gathered_loss_costs_the_loss_positions_only():
  """XLA's cost analysis of d loss / d (hidden, embedding): the projection dominates, so a
  response-only mask on a quarter of the positions cuts the FLOPs about 4x."""
  b, t, d, v = 2, 64, 32, 4096
  hidden, embedding = jnp.zeros((b, t, d)), jnp.zeros((v, d))
  targets = jnp.zeros((b, t), jnp.int32)
  weights = jnp.zeros((b, t)).at[:, 48:].set(1.0)  # weights traced, as in a train step

  def cost(loss):
    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(hidden, embedding, weights).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return analysis["flops"], compiled.memory_analysis().temp_size_in_bytes

  full_flops, full_bytes = cost(lambda h, e, w: losses.next_token_cross_entropy(
      jnp.einsum("btd,vd->btv", h, e), targets, w)[0])
  flops, temp = cost(lambda h, e, w: losses.gathered_next_token_cross_entropy(
      h, e, targets, w, 32)[0])
  projection = 3 * 2 * d * v  # forward, and two gradients, per row
  assert full_flops >= b * t * projection
  assert flops < 32 * projection * 1.1 < full_flops / 3.5, (flops, full_flops)
  assert temp < full_bytes / 3, (temp, full_bytes)


def test_language_model_loss_with_loss_positions_matches_plain():
  cfg = M.get_config("tiny_gemma2")  # final-logit soft-cap on
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, cfg.vocab_size)
  batch = {"tokens": tokens, "input_mask": jnp.ones(tokens.shape, bool).at[0, :2].set(False),
           "loss_mask": jnp.ones(tokens.shape, jnp.int32).at[:, :7].set(0)}

  def run(**options):
    lm_loss = losses.language_model_loss(cfg, **options)
    fn = lambda p: lm_loss(p, batch, jax.random.key(0))
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

  (want, want_aux), want_grads = run()
  (got, got_aux), got_grads = run(loss_positions=12)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(got_aux["num_target_tokens"]) == float(want_aux["num_target_tokens"]) == 10.0
  assert float(got_aux["loss_positions_dropped"]) == 0.0
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-7)
  with pytest.raises(ValueError, match="train.loss_positions"):
    losses.sft_loss_fn(cfg, None, loss_positions=-1)
