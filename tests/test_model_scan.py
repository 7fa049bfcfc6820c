"""Execution choices that must not change the numbers: remat policies and the layer scan.

Every comparison runs both sides under jit in float32 on tiny random models; the layer counts
are chosen so each scan has more than one repetition and, where the pattern allows, a
remainder of unrolled layers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import lora as L
from alignment import model as M
from alignment.model.low_rank import LowRank

CONFIGS = {
    "gemma1": M.get_config("tiny_gemma1", num_layers=3),  # period 1: a scan of 3
    "gemma2": M.get_config("tiny_gemma2", num_layers=5),  # 2 periods + 1 unrolled layer
    # The real Gemma 3 pattern, 5 local : 1 global, over 14 layers: 2 periods + 2 layers.
    "gemma3": M.get_config("tiny_gemma3", num_layers=14,
                           attention_pattern=("local",) * 5 + ("global",)),
}
LENGTH = 12  # longer than the tiny sliding window (8), so local layers mask something


def _inputs(cfg, batch=2, length=LENGTH):
  tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, cfg.vocab_size)
  valid = jnp.ones((batch, length), bool).at[1, :3].set(False)  # row 1 left-padded
  return tokens, M.positions_from_mask(valid), M.causal_mask(valid)


def _loss_logits_grads(cfg, params, lora=None):
  """(next-token loss [], logits [B, T, V], d loss / d params) of one jitted call."""
  tokens, positions, mask = _inputs(cfg)

  def loss(p):
    logits, _ = M.forward(cfg, p, tokens, positions, mask, lora=lora)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1)), logits

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, logits, grads


def _assert_trees_close(a, b, rtol, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def test_remat_policy_is_validated():
  with pytest.raises(ValueError, match="unknown remat policy"):
    M.get_config("tiny_gemma1", remat="some")


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_scan_keeps_the_parameter_tree(family):
  """Both modes initialise the same `layer_{i}` tree with the same values."""
  cfg = CONFIGS[family]
  plain = M.init_params(cfg, jax.random.key(0))
  scanned = M.init_params(cfg.replace(scan_layers=True), jax.random.key(0))
  assert sorted(k for k in plain if k.startswith("layer_")) == sorted(
      f"layer_{i}" for i in range(cfg.num_layers))
  _assert_trees_close(plain, scanned, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_scan_matches_unrolled(family):
  """Same loss, logits and gradients (every layer's) as the unrolled decoder."""
  cfg = CONFIGS[family]
  params = M.init_params(cfg, jax.random.key(0))
  loss, logits, grads = _loss_logits_grads(cfg, params)
  s_loss, s_logits, s_grads = _loss_logits_grads(cfg.replace(scan_layers=True), params)
  assert np.isfinite(float(loss)) and float(loss) > 1.0  # a real loss, not a degenerate 0
  np.testing.assert_allclose(float(s_loss), float(loss), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s_logits), np.asarray(logits), rtol=1e-5, atol=1e-5)
  _assert_trees_close(s_grads, grads, rtol=1e-5, atol=1e-6)
  # Every layer gets a gradient through the scan, not only the unrolled remainder.
  assert all(float(jnp.abs(s_grads[f"layer_{i}"]["mlp"]["linear"]).max()) > 0
             for i in range(cfg.num_layers))


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_matches_no_remat(remat):
  """Recomputing activations in the backward pass leaves loss and gradients unchanged."""
  cfg = M.get_config("tiny_gemma2")
  params = M.init_params(cfg, jax.random.key(0))
  loss, _, grads = _loss_logits_grads(cfg, params)
  r_loss, _, r_grads = _loss_logits_grads(cfg.replace(remat=remat), params)
  np.testing.assert_allclose(float(r_loss), float(loss), rtol=1e-7)
  _assert_trees_close(r_grads, grads, rtol=1e-6, atol=1e-8)


def test_remat_inside_the_scan_matches_unrolled():
  """The Gemma 3 pattern with a remainder, scanned and rematerialised, against plain."""
  cfg = CONFIGS["gemma3"]
  params = M.init_params(cfg, jax.random.key(0))
  loss, _, grads = _loss_logits_grads(cfg, params)
  r_loss, _, r_grads = _loss_logits_grads(cfg.replace(scan_layers=True, remat="full"), params)
  np.testing.assert_allclose(float(r_loss), float(loss), rtol=1e-6)
  _assert_trees_close(r_grads, grads, rtol=1e-5, atol=1e-6)


def test_scanned_kv_cache_matches_unrolled():
  """Prefill then one-token steps: the scanned decoder writes the same cache and logits."""
  cfg = CONFIGS["gemma2"]
  scan_cfg = cfg.replace(scan_layers=True)
  params = M.init_params(cfg, jax.random.key(0))
  tokens, positions, causal = _inputs(cfg)
  cache_len = 16
  mask = jnp.zeros((2, LENGTH, cache_len), bool).at[:, :, :LENGTH].set(causal)
  step = jax.jit(M.forward, static_argnums=0)
  outs = {}
  for c in (cfg, scan_cfg):
    cache = M.init_cache(c, 2, cache_len)
    logits, cache = step(c, params, tokens[:, :8], positions[:, :8], mask[:, :8], cache)
    steps = [logits]
    for t in range(8, LENGTH):
      logits, cache = step(c, params, tokens[:, t:t + 1], positions[:, t:t + 1],
                           mask[:, t:t + 1], cache)
      steps.append(logits)
    outs[c.scan_layers] = (jnp.concatenate(steps, axis=1), cache)
  (plain, plain_cache), (scanned, scanned_cache) = outs[False], outs[True]
  np.testing.assert_allclose(np.asarray(scanned), np.asarray(plain), rtol=1e-5, atol=1e-5)
  assert int(scanned_cache["index"]) == LENGTH
  assert float(jnp.abs(scanned_cache["layer_4"]["k"][:, :LENGTH]).max()) > 0  # remainder layer
  _assert_trees_close(scanned_cache, plain_cache, rtol=1e-5, atol=1e-5)


def _paths(cfg, layers, rng=None, rank=2):
  """Random low-rank paths on q and down of the given layers (b nonzero, so they matter)."""
  keys = iter(jax.random.split(jax.random.key(7), 4 * len(layers)))
  n, h, d, f = cfg.num_heads, cfg.head_dim, cfg.embed_dim, cfg.hidden_dim
  normal = lambda shape: 0.1 * jax.random.normal(next(keys), shape)
  return {f"layer_{i}": {
      "q": LowRank(normal((d, rank)), normal((rank, n, h)), scale=2.0, dropout=0.5,
                   rng=None if rng is None else jax.random.fold_in(rng, 2 * i)),
      "down": LowRank(normal((f, rank)), normal((rank, d)), scale=2.0, dropout=0.5,
                      rng=None if rng is None else jax.random.fold_in(rng, 2 * i + 1)),
  } for i in layers}


@pytest.mark.parametrize("dropout", [False, True])
def test_scanned_low_rank_paths_match_unrolled(dropout):
  """Paths on every layer (with per-site dropout keys, or none) are scanned like the params."""
  cfg = CONFIGS["gemma2"]
  params = M.init_params(cfg, jax.random.key(0))
  lora = _paths(cfg, range(cfg.num_layers), jax.random.key(3) if dropout else None)
  loss, logits, grads = _loss_logits_grads(cfg, params, lora)
  s_loss, s_logits, s_grads = _loss_logits_grads(cfg.replace(scan_layers=True), params, lora)
  base_loss, _, _ = _loss_logits_grads(cfg, params)
  assert abs(float(loss) - float(base_loss)) > 1e-3  # the paths change the model
  np.testing.assert_allclose(float(s_loss), float(loss), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s_logits), np.asarray(logits), rtol=1e-5, atol=1e-5)
  _assert_trees_close(s_grads, grads, rtol=1e-5, atol=1e-6)


def test_low_rank_paths_on_some_layers_are_not_scanned():
  """Adapters on the top layers only (lora.last_layers) cannot be stacked: a clear error."""
  cfg = CONFIGS["gemma2"]
  params = M.init_params(cfg, jax.random.key(0))
  tokens, positions, mask = _inputs(cfg)
  with pytest.raises(NotImplementedError, match="same low-rank sites on every layer"):
    M.forward(cfg.replace(scan_layers=True), params, tokens, positions, mask,
              lora=_paths(cfg, [2, 3, 4]))
  # Paths on the unrolled remainder alone (layer 4 of 2 x 2 + 1) need no stacking.
  out, _ = M.forward(cfg.replace(scan_layers=True), params, tokens, positions, mask,
                     lora=_paths(cfg, [4]))
  ref, _ = M.forward(cfg, params, tokens, positions, mask, lora=_paths(cfg, [4]))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_scanned_scalar_head_with_real_adapters_matches_unrolled():
  """The backbone of a scalar head scans too, with `alignment.lora` paths and dropout keys."""
  cfg = CONFIGS["gemma3"]
  lcfg = L.LoraConfig(rank=2, dropout=0.25)
  head = M.init_scalar_head_params(cfg, jax.random.key(5), M.init_params(cfg, jax.random.key(0)))
  head["w"] = jax.random.normal(jax.random.key(6), head["w"].shape)
  adapters = L.init_adapters(cfg, lcfg, jax.random.key(2))
  adapters = jax.tree.map(lambda x: x + 0.05, adapters)  # b != 0, so the paths matter
  tokens, positions, mask = _inputs(cfg)

  def score(c):
    fn = lambda p, a: M.scalar_head_forward(
        c, p, tokens, positions, mask, lora=L.adapter_paths(a, lcfg, jax.random.key(9)))
    return jax.jit(jax.value_and_grad(lambda p, a: jnp.sum(fn(p, a) ** 2), argnums=(0, 1)))(
        head, adapters)

  (value, grads), (s_value, s_grads) = score(cfg), score(cfg.replace(scan_layers=True))
  assert float(value) > 1e-3
  np.testing.assert_allclose(float(s_value), float(value), rtol=1e-5)
  _assert_trees_close(s_grads, grads, rtol=1e-4, atol=1e-6)
