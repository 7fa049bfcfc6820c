"""LoRA adapters: exact low-rank update, frozen base, save/load, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import lora as L
from alignment import model as M


@pytest.fixture(scope="module")
def setup():
  cfg = M.get_config("tiny_gemma2")
  base = M.init_params(cfg, jax.random.key(0))
  lcfg = L.LoraConfig(rank=4, alpha=8.0)
  adapters = L.init_adapters(cfg, lcfg, jax.random.key(1))
  # Non-zero B so the update is visible.
  adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape),
                          adapters)
  return cfg, base, lcfg, adapters


def test_fresh_adapters_leave_model_unchanged():
  cfg = M.get_config("tiny_gemma3")
  base = M.init_params(cfg, jax.random.key(0))
  lcfg = L.LoraConfig(rank=2)
  merged = L.merge(base, L.init_adapters(cfg, lcfg, jax.random.key(1)), lcfg)
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(merged)):
    np.testing.assert_array_equal(a, b)


def test_merged_projection_equals_explicit_low_rank_path(setup):
  """x @ merged == x @ W + scale * (x @ A) @ B, computed independently in numpy."""
  cfg, base, lcfg, adapters = setup
  x = np.asarray(jax.random.normal(jax.random.key(3), (5, cfg.embed_dim)))
  base_q = base["layer_1"]["attn"]["q_einsum"]
  merged = L.merge(base, adapters, lcfg)
  ab = adapters["layer_1"]
  # Query projection: W [N, D, H], A [D, r], B [r, N, H].
  w = np.asarray(base["layer_1"]["attn"]["q_einsum"])
  a, b = np.asarray(ab["q"]["a"]), np.asarray(ab["q"]["b"])
  want = np.einsum("td,ndh->tnh", x, w) + lcfg.scale * np.einsum("tr,rnh->tnh", x @ a, b)
  got = np.einsum("td,ndh->tnh", x, np.asarray(merged["layer_1"]["attn"]["q_einsum"]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Up projection is slice 1 of the stacked gating weight; slice 0 gets the gate adapter.
  w_up = np.asarray(base["layer_1"]["mlp"]["gating_einsum"][1])
  a, b = np.asarray(ab["up"]["a"]), np.asarray(ab["up"]["b"])
  want = x @ w_up + lcfg.scale * (x @ a) @ b
  got = x @ np.asarray(merged["layer_1"]["mlp"]["gating_einsum"][1])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The base tree is not modified in place.
  assert base["layer_1"]["attn"]["q_einsum"] is base_q
  assert not np.allclose(merged["layer_1"]["attn"]["q_einsum"], base["layer_1"]["attn"]["q_einsum"])


def test_gradients_reach_only_adapters(setup):
  cfg, base, lcfg, adapters = setup
  tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, cfg.vocab_size)
  valid = jnp.ones((2, 10), bool)

  def loss(adapters):
    logits, _ = M.forward(cfg, L.merge(base, adapters, lcfg), tokens,
                          M.positions_from_mask(valid), M.causal_mask(valid))
    return jnp.mean(jax.nn.logsumexp(logits, -1))

  grads = jax.jit(jax.grad(loss))(adapters)
  assert jax.tree.structure(grads) == jax.tree.structure(adapters)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_dropout_changes_update_only_in_training(setup):
  cfg, base, _, adapters = setup
  lcfg = L.LoraConfig(rank=4, alpha=8.0, dropout=0.5)
  eval_merged = L.merge(base, adapters, lcfg)
  train_merged = L.merge(base, adapters, lcfg, dropout_rng=jax.random.key(5))
  q = lambda p: np.asarray(p["layer_0"]["attn"]["q_einsum"])
  assert not np.allclose(q(eval_merged), q(train_merged))
  np.testing.assert_array_equal(q(eval_merged), q(L.merge(base, adapters, lcfg)))


def test_save_load_roundtrip_and_shape_errors(setup, tmp_path):
  cfg, _, lcfg, adapters = setup
  path = tmp_path / "adapters.npz"
  L.save_adapters(path, adapters, lcfg)
  loaded, lcfg2 = L.load_adapters(path, cfg)
  assert lcfg2 == lcfg
  for a, b in zip(jax.tree.leaves(adapters), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"expected shape"):
    L.load_adapters(path, M.get_config("tiny_gemma2").replace(embed_dim=32))
  with pytest.raises(FileNotFoundError, match="no LoRA adapter file"):
    L.load_adapters(tmp_path / "missing.npz")


def test_bad_lora_config():
  with pytest.raises(ValueError, match="unknown LoRA target"):
    L.LoraConfig(targets=("q", "qq"))
  with pytest.raises(ValueError, match="rank"):
    L.LoraConfig(rank=0)
