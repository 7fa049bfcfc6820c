"""Attention through jax.nn.dot_product_attention against the explicit scores it replaces.

float32, tiny configs of each Gemma generation: padding, packed segments, GQA/MQA, the sliding
window, and prefill + decoding through the KV cache. Gemma 2 is run without its soft-cap
under "xla" (the fused call cannot express it; "auto" keeps the explicit path for it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import model as M
from alignment.model.attention import implementation
from test_sampler import lively_params

# (preset, overrides): Gemma 1 MQA; Gemma 2 GQA (2 kv heads) local/global; Gemma 3 QK-norm.
FAMILIES = {"gemma1": ("tiny_gemma1", {}),
            "gemma2": ("tiny_gemma2", {"attn_logits_soft_cap": None}),
            "gemma3": ("tiny_gemma3", {})}
LENGTH = 20  # > the tiny window (8)


def configs(family):
  name, overrides = FAMILIES[family]
  cfg = M.get_config(name, **overrides)
  return cfg.replace(attention_impl="explicit"), cfg.replace(attention_impl="xla")


def inputs(kind):
  tokens = jax.random.randint(jax.random.key(1), (2, LENGTH), 0, 512)
  if kind == "packed":
    segments = jnp.array([[1] * 7 + [2] * 9 + [0] * 4, [1] * 12 + [2] * 8])
    starts = jnp.array([[0] * 7 + [7] * 9 + [16] * 4, [0] * 12 + [12] * 8])
    positions = jnp.arange(LENGTH)[None] - starts
    return tokens, positions, M.segment_causal_mask(segments), segments != 0
  valid = jnp.ones((2, LENGTH), bool).at[1, :5].set(False)  # row 1 left-padded
  return tokens, M.positions_from_mask(valid), M.causal_mask(valid), valid


def close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_logits_match_explicit(family):
  explicit, fused = configs(family)
  params = lively_params(explicit)
  run = lambda cfg: jax.jit(lambda p, t, pos, m: M.forward(cfg, p, t, pos, m)[0])
  ref_fn, got_fn = run(explicit), run(fused)
  for kind in ("padded", "packed"):  # same shapes: one compile per config
    tokens, positions, mask, real = inputs(kind)
    ref = ref_fn(params, tokens, positions, mask)
    got = got_fn(params, tokens, positions, mask)
    real = np.asarray(real)
    close(got[real], ref[real])
    assert float(jnp.std(ref[real])) > 0.1  # the comparison is not between constants


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_prefill_and_decode_match_explicit(family):
  """Prefill 11 tokens, then one token a step past the window, both through the cache."""
  explicit, fused = configs(family)
  params = lively_params(explicit)
  tokens, positions, causal, valid = inputs("padded")
  cache_len = 24
  mask = jnp.pad(causal, ((0, 0), (0, 0), (0, cache_len - LENGTH)))

  def run(cfg):
    step = jax.jit(lambda p, t, pos, m, c: M.forward(cfg, p, t, pos, m, c))
    out, cache = step(params, tokens[:, :11], positions[:, :11], mask[:, :11],
                      M.init_cache(cfg, 2, cache_len))
    outs = [out]
    for t in range(11, LENGTH):
      out, cache = step(params, tokens[:, t:t + 1], positions[:, t:t + 1], mask[:, t:t + 1],
                        cache)
      outs.append(out)
    return jnp.concatenate(outs, axis=1), cache

  ref, ref_cache = run(explicit)
  got, got_cache = run(fused)
  real = np.asarray(valid)
  close(got[real], ref[real])
  for name in ("layer_0", "layer_1"):
    close(got_cache[name]["k"], ref_cache[name]["k"])


def test_fused_gradients_match_explicit():
  explicit, fused = configs("gemma3")
  params = lively_params(explicit)
  tokens, positions, mask, valid = inputs("padded")

  def loss(cfg):
    def f(p):
      logits, _ = M.forward(cfg, p, tokens, positions, mask)
      logp = jax.nn.log_softmax(logits[:, :-1])
      picked = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
      return -jnp.sum(picked * valid[:, 1:]) / jnp.sum(valid[:, 1:])
    return jax.jit(jax.value_and_grad(f))(params)

  (ref_loss, ref_grads), (loss_, grads) = loss(explicit), loss(fused)
  np.testing.assert_allclose(float(loss_), float(ref_loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_auto_is_the_fused_call_on_cpu_and_explicit_with_soft_cap():
  assert implementation("auto", None, "float32", 16, 20, 20, "cpu")[0] == "xla"
  if jax.default_backend() == "cpu":  # what the decoder traces on this machine
    assert implementation("auto", None, "float32", 16, 20, 20)[0] == "xla"
  impl, why = implementation("auto", 50.0, "float32", 16, 20, 20, "cpu")
  assert impl == "explicit" and "soft_cap" in why


def test_cudnn_is_chosen_only_where_its_constraints_hold():
  assert implementation("auto", None, "bfloat16", 16, 64, 64, "gpu")[0] == "cudnn"
  for args, reason in [(("float32", 16, 64, 64), "dtype"), (("bfloat16", 12, 64, 64), "head_dim"),
                       (("bfloat16", 16, 63, 63), "even"), (("bfloat16", 512, 64, 64), "head_dim")]:
    impl, why = implementation("auto", None, *args, "gpu")
    assert impl == "xla" and reason in why
  with pytest.raises(ValueError, match="GPU"):
    implementation("cudnn", None, "bfloat16", 16, 64, 64, "cpu")


def test_fused_request_with_soft_cap_is_rejected():
  with pytest.raises(ValueError, match="attn_logits_soft_cap"):
    M.get_config("tiny_gemma2", attention_impl="xla")
  with pytest.raises(ValueError, match="unknown attention_impl"):
    M.get_config("tiny_gemma1", attention_impl="flash")
