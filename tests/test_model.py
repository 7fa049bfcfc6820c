"""Decoder invariants on tiny random configs of each Gemma generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import model as M

FAMILIES = ["tiny_gemma1", "tiny_gemma2", "tiny_gemma3"]


@pytest.mark.parametrize("name", FAMILIES)
def test_param_count_matches_formula(name):
  cfg = M.get_config(name)
  params = M.init_params(cfg, jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()


@pytest.mark.parametrize("name", FAMILIES)
def test_incremental_decoding_matches_full_forward(name):
  """Prefill + one-token steps through the KV cache give the same logits as one pass."""
  cfg = M.get_config(name)
  params = M.init_params(cfg, jax.random.key(0))
  length, cache_len = 24, 32  # longer than the tiny sliding window (8)
  tokens = jax.random.randint(jax.random.key(1), (2, length), 0, cfg.vocab_size)
  valid = jnp.ones((2, length), bool).at[1, :5].set(False)  # row 1 is left-padded
  positions = M.positions_from_mask(valid)
  full, _ = M.forward(cfg, params, tokens, positions, M.causal_mask(valid))

  mask = jnp.zeros((2, length, cache_len), bool).at[:, :, :length].set(M.causal_mask(valid))
  cache = M.init_cache(cfg, 2, cache_len)
  out, cache = M.forward(cfg, params, tokens[:, :10], positions[:, :10], mask[:, :10], cache)
  steps = [out]
  for t in range(10, length):
    out, cache = M.forward(cfg, params, tokens[:, t:t + 1], positions[:, t:t + 1],
                           mask[:, t:t + 1], cache)
    steps.append(out)
  incremental = jnp.concatenate(steps, axis=1)
  real = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(incremental)[real], np.asarray(full)[real],
                             atol=2e-4, rtol=2e-4)
  assert int(cache["index"]) == length


def test_left_padding_does_not_change_logits():
  cfg = M.get_config("tiny_gemma3")
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(2), (1, 12), 0, cfg.vocab_size)
  valid = jnp.ones((1, 12), bool)
  ref, _ = M.forward(cfg, params, tokens, M.positions_from_mask(valid), M.causal_mask(valid))
  padded = jnp.concatenate([jnp.zeros((1, 4), tokens.dtype), tokens], axis=1)
  pvalid = jnp.concatenate([jnp.zeros((1, 4), bool), valid], axis=1)
  out, _ = M.forward(cfg, params, padded, M.positions_from_mask(pvalid), M.causal_mask(pvalid))
  np.testing.assert_allclose(out[:, 4:], ref, atol=2e-4, rtol=2e-4)


def test_sliding_window_limits_receptive_field():
  """On a local-only model, a token further back than the window cannot affect the output."""
  cfg = M.get_config("tiny_gemma3").replace(num_layers=1, attention_pattern=("local",))
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(3), (1, 20), 0, cfg.vocab_size)
  valid = jnp.ones((1, 20), bool)
  run = lambda t: M.forward(cfg, params, t, M.positions_from_mask(valid),
                            M.causal_mask(valid))[0]
  changed = tokens.at[0, 0].set((tokens[0, 0] + 1) % cfg.vocab_size)
  a, b = run(tokens), run(changed)
  window = cfg.sliding_window_size
  assert not np.allclose(a[0, window - 1], b[0, window - 1])  # token 0 still in view
  np.testing.assert_allclose(a[0, window:], b[0, window:], atol=1e-5)  # out of view


def test_packed_segments_do_not_attend_across():
  cfg = M.get_config("tiny_gemma2")
  params = M.init_params(cfg, jax.random.key(0))
  a = jax.random.randint(jax.random.key(4), (1, 6), 0, cfg.vocab_size)
  b = jax.random.randint(jax.random.key(5), (1, 5), 0, cfg.vocab_size)
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.array([[1] * 6 + [2] * 5])
  positions = jnp.array([list(range(6)) + list(range(5))])
  out, _ = M.forward(cfg, params, packed, positions, M.segment_causal_mask(segments))
  ones = lambda n: jnp.ones((1, n), bool)
  alone, _ = M.forward(cfg, params, b, M.positions_from_mask(ones(5)), M.causal_mask(ones(5)))
  np.testing.assert_allclose(out[:, 6:], alone, atol=2e-4, rtol=2e-4)


def test_final_logit_soft_cap_bounds_logits():
  cfg = M.get_config("tiny_gemma2")
  params = M.init_params(cfg, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 50, params)
  tokens = jnp.arange(8)[None]
  valid = jnp.ones((1, 8), bool)
  out, _ = M.forward(cfg, params, tokens, M.positions_from_mask(valid), M.causal_mask(valid))
  assert float(jnp.abs(out).max()) <= cfg.final_logit_soft_cap + 1e-4


def test_invalid_config_is_rejected():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    M.get_config("tiny_gemma1").replace(num_kv_heads=3)
  with pytest.raises(KeyError, match="unknown model preset"):
    M.get_config("gemma_99b")
