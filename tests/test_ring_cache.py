"""Window-sized ring KV cache of local layers against the full-length cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import model as M
from alignment.sampling import sampler as S
from test_sampler import left_pad, lively_params, random_prompts

WINDOW = 8  # the tiny configs' sliding window


def close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,overrides", [
    ("tiny_gemma2", {}),  # soft-capped: the explicit attention path
    ("tiny_gemma3", {"scan_layers": True}),  # the fused path, rings stacked in the scan
])
def test_ring_cache_logits_match_full_cache(name, overrides):
  """A prompt longer than the window, a 3-token chunk, then single tokens far past it."""
  cfg = M.get_config(name, **overrides)
  params = lively_params(M.get_config(name))
  length, cache_len = 30, 32
  tokens = jax.random.randint(jax.random.key(1), (2, length), 0, cfg.vocab_size)
  valid = jnp.ones((2, length), bool).at[1, :4].set(False)
  positions = M.positions_from_mask(valid)
  mask = jnp.pad(M.causal_mask(valid), ((0, 0), (0, 0), (0, cache_len - length)))
  step = jax.jit(lambda p, t, pos, m, c: M.forward(cfg, p, t, pos, m, c))

  def run(ring):
    cache = M.init_cache(cfg, 2, cache_len, ring_local=ring)
    outs = []
    for lo, hi in [(0, 11), (11, 14)] + [(t, t + 1) for t in range(14, length)]:
      out, cache = step(params, tokens[:, lo:hi], positions[:, lo:hi], mask[:, lo:hi], cache)
      outs.append(out)
    return jnp.concatenate(outs, axis=1), cache

  full, _ = run(False)
  ring, cache = run(True)
  real = np.asarray(valid)
  close(ring[real], full[real])
  for i, kind in enumerate(cfg.attention_types):
    assert cache[f"layer_{i}"]["k"].shape[1] == (WINDOW if kind == "local" else cache_len)


def test_ring_cache_memory_is_the_window():
  cfg = M.get_config("tiny_gemma3")  # local, local, global, x2
  full = M.init_cache(cfg, 3, 100)
  ring = M.init_cache(cfg, 3, 100, ring_local=True)
  per_slot = 3 * cfg.num_kv_heads * cfg.head_dim * 4 * 2  # k and v, float32
  for i, kind in enumerate(cfg.attention_types):
    nbytes = sum(x.nbytes for x in ring[f"layer_{i}"].values())
    assert nbytes == per_slot * (WINDOW if kind == "local" else 100)
  total = lambda c: sum(x.nbytes for x in jax.tree.leaves(c))
  assert total(full) - total(ring) == 4 * per_slot * (100 - WINDOW)
  # A cache shorter than the window needs no ring.
  assert M.init_cache(cfg, 1, 5, ring_local=True)["layer_0"]["k"].shape[1] == 5


def test_sampler_ring_cache_gives_the_full_cache_tokens():
  """Greedy and sampled generation 40 tokens past prompts around the window."""
  cfg = M.get_config("tiny_gemma3")
  params = lively_params(cfg)
  tokens, mask = left_pad(random_prompts(cfg, (3, 11, 6)))
  for sampling in (S.SamplingParams(), S.SamplingParams(temperature=1.0, top_k=20)):
    outs = [S.generate(cfg, params, tokens, mask, jax.random.key(3), 40, sampling, stop_ids=(),
                       return_logprobs=True, ring_local=ring) for ring in (False, True)]
    np.testing.assert_array_equal(np.asarray(outs[1].tokens), np.asarray(outs[0].tokens))
    close(outs[1].logprobs, outs[0].logprobs)
  assert len(set(np.asarray(outs[0].tokens).ravel().tolist())) > 10


def test_ring_of_the_wrong_size_is_rejected():
  cfg = M.get_config("tiny_gemma3")
  cache = M.init_cache(cfg, 1, 32)
  cache["layer_0"] = M.init_cache(cfg, 1, 5)["layer_0"]
  tokens = jnp.zeros((1, 2), jnp.int32)
  mask = jnp.ones((1, 2, 32), bool)
  with pytest.raises(ValueError, match="sliding_window_size=8"):
    jax.eval_shape(lambda p: M.forward(cfg, p, tokens, tokens, mask, cache),
                   M.param_shapes(cfg))
