"""Chunked vocabulary cross-entropy: the same loss and gradients without full logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import lora as L
from alignment import model as M
from alignment.model.layers import soft_cap
from alignment.training import losses


@pytest.mark.parametrize("cap", [None, 5.0])
def test_chunked_equals_full_logits_loss_and_gradients(cap):
  b, t, d, v = 2, 11, 16, 97  # 11 positions in chunks of 4: the last chunk is padded
  keys = jax.random.split(jax.random.key(0), 4)
  hidden = jax.random.normal(keys[0], (b, t, d))
  embedding = jax.random.normal(keys[1], (v, d))
  targets = jax.random.randint(keys[2], (b, t), 0, v)
  weights = (jax.random.uniform(keys[3], (b, t)) > 0.3).astype(jnp.float32)

  def full(h, e):
    logits = soft_cap(jnp.einsum("btd,vd->btv", h, e), cap)
    return losses.next_token_cross_entropy(logits, targets, weights)[0]

  def chunked(h, e):
    return losses.chunked_next_token_cross_entropy(h, e, targets, weights, cap, chunk_size=4)[0]

  want, want_grads = jax.jit(jax.value_and_grad(full, (0, 1)))(hidden, embedding)
  got, got_grads = jax.jit(jax.value_and_grad(chunked, (0, 1)))(hidden, embedding)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for g, w in zip(got_grads, want_grads):
    assert float(jnp.max(jnp.abs(w))) > 0
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  _, count = losses.chunked_next_token_cross_entropy(hidden, embedding, targets, weights, cap, 4)
  assert float(count) == float(weights.sum())


def test_language_model_loss_chunked_matches_plain_with_lora():
  cfg = M.get_config("tiny_gemma2")  # final-logit soft-cap on
  base = M.init_params(cfg, jax.random.key(0))
  lcfg = L.LoraConfig(rank=2, alpha=4.0)
  adapters = jax.tree.map(lambda x: x + 0.05, L.init_adapters(cfg, lcfg, jax.random.key(1)))
  tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, cfg.vocab_size)
  batch = {"tokens": tokens, "input_mask": jnp.ones(tokens.shape, bool).at[0, :2].set(False),
           "loss_mask": jnp.ones(tokens.shape, jnp.int32).at[:, :4].set(0)}

  def make(chunk):
    lm_loss = losses.language_model_loss(cfg, logits_chunk=chunk)
    def loss(params):
      return lm_loss(params["base"], batch, jax.random.key(0),
                     lora=L.adapter_paths(params["lora"], lcfg))
    return jax.jit(jax.value_and_grad(loss, has_aux=True))

  params = {"base": base, "lora": adapters}
  (want, want_aux), want_grads = make(None)(params)
  (got, got_aux), got_grads = make(4)(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(got_aux["num_target_tokens"]) == float(want_aux["num_target_tokens"]) == 12.0
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got_grads)[0],
                          jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_chunked_loss_needs_far_less_temporary_memory():
  """XLA's buffer assignment: full logits [2, 64, 32768] float32 are 16 MiB (and their
  gradient as much again); in chunks of 8 positions only 1/8 of that is live."""
  b, t, d, v = 2, 64, 32, 32768
  hidden = jnp.zeros((b, t, d))
  embedding = jnp.zeros((v, d))
  targets = jnp.zeros((b, t), jnp.int32)

  def temp_bytes(loss):
    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(hidden, embedding).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  full = temp_bytes(lambda h, e: losses.next_token_cross_entropy(
      jnp.einsum("btd,vd->btv", h, e), targets)[0])
  chunked = temp_bytes(lambda h, e: losses.chunked_next_token_cross_entropy(
      h, e, targets, chunk_size=8)[0])
  logits_bytes = b * t * v * 4
  assert full >= 2 * logits_bytes, full  # logits and their gradient
  # Chunked: one chunk's logits and gradient (2 x 2 MiB) + the scan's embedding-gradient
  # accumulator (4 MiB); well under a single copy of the full logits.
  chunk_bytes = b * 8 * v * 4
  assert chunked <= 2 * chunk_bytes + v * d * 4 + 2**20 < logits_bytes, (chunked, full)


def test_chunked_loss_rejects_bad_shapes():
  with pytest.raises(ValueError, match="disagree"):
    losses.chunked_next_token_cross_entropy(jnp.zeros((2, 5, 4)), jnp.zeros((7, 4)),
                                            jnp.zeros((2, 6), jnp.int32))
  with pytest.raises(ValueError, match="chunk_size"):
    losses.chunked_next_token_cross_entropy(jnp.zeros((2, 5, 4)), jnp.zeros((7, 4)),
                                            jnp.zeros((2, 5), jnp.int32), chunk_size=0)
