"""Weight-only quantization: rounding against a NumPy reference, invariants, and the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment.model.layers import EMBED_INIT_STDDEV
from alignment import quantization as Q
from alignment.model import config as model_config
from alignment.model import transformer

pytest.importorskip("qwix")


@pytest.fixture(scope="module")
def tiny():
  cfg = model_config.get_config("tiny_gemma3")
  params = transformer.init_params(cfg, jax.random.key(0))
  # A unit-stddev table, as a trained model's is far from zero (the default init is small).
  params["embedder"]["input_embedding"] /= EMBED_INIT_STDDEV
  return cfg, params


@pytest.fixture(scope="module")
def quantized(tiny):
  _, params = tiny
  return {s: jax.jit(lambda p, s=s: Q.quantize_params(p, s))(params) for s in ("int8", "int4")}


def reference_round_trip(w: np.ndarray, contraction: tuple[int, ...], scheme: str):
  """Symmetric round-to-nearest written out in NumPy: (dequantized, scale per element)."""
  w = np.asarray(w, np.float64)
  if scheme == "int8":
    absmax = np.max(np.abs(w), axis=contraction, keepdims=True)
    scale = np.broadcast_to(absmax / 127.0, w.shape)
    return np.round(w / scale) * scale, scale
  axis = contraction[-1]
  group = min(Q.INT4_GROUP, w.shape[axis])
  moved = np.moveaxis(w, axis, -1)
  grouped = moved.reshape(*moved.shape[:-1], moved.shape[-1] // group, group)
  scale = np.max(np.abs(grouped), axis=-1, keepdims=True) / 7.0
  deq = (np.round(grouped / scale) * scale).reshape(moved.shape)
  scale = np.broadcast_to(scale, grouped.shape).reshape(moved.shape)
  return np.moveaxis(deq, -1, axis), np.moveaxis(scale, -1, axis)


def weights(params):
  return [(jax.tree_util.keystr(p), p[-1].key, w)
          for p, w in jax.tree_util.tree_leaves_with_path(params) if Q.is_quantized_weight(p)]


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_matches_reference_within_half_a_step(tiny, quantized, scheme):
  _, params = tiny
  q = dict((k, w) for k, _, w in weights(quantized[scheme]))
  names = set()
  for key, name, w in weights(params):
    names.add(name)
    expected, scale = reference_round_trip(np.asarray(w), Q.LAYOUTS[name].contraction, scheme)
    got = np.asarray(q[key], np.float64)
    # |w - q(w)| <= scale / 2 for every element (float32 slack), and q(w) = our reference.
    assert np.all(np.abs(np.asarray(w) - got) <= scale / 2 * (1 + 1e-5) + 1e-12), key
    # q(w) = our reference, except where w / scale sits on a rounding tie (float32 vs 64).
    differ = ~np.isclose(got, expected, rtol=1e-5, atol=1e-7)
    frac = np.abs(np.asarray(w) / scale) % 1.0
    assert np.all(np.abs(frac[differ] - 0.5) < 1e-4), key
    assert differ.mean() < 1e-3, key
    np.testing.assert_allclose(np.asarray(Q.quantization_scales(w, name, scheme)), scale,
                               rtol=1e-5, err_msg=key)
  assert names == {"q_einsum", "kv_einsum", "attn_vec_einsum", "gating_einsum", "linear",
                   "input_embedding"}


def test_int4_has_at_most_16_levels_per_group(tiny, quantized):
  _, params = tiny
  w = params["layer_0"]["mlp"]["gating_einsum"]  # [2, D, F]; groups along D
  q = np.asarray(quantized["int4"]["layer_0"]["mlp"]["gating_einsum"])
  scale = np.asarray(Q.quantization_scales(w, "gating_einsum", "int4"))
  levels = q / scale
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # integer multiples
  assert np.abs(np.round(levels)).max() <= 7
  group = Q.INT4_GROUP
  for g in range(w.shape[1] // group):
    block = q[:, g * group:(g + 1) * group, :]
    for i in range(block.shape[0]):
      for f in range(0, block.shape[2], 17):
        assert len(np.unique(block[i, :, f])) <= 16


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_idempotent_same_structure_norms_untouched(tiny, quantized, scheme):
  _, params = tiny
  q = quantized[scheme]
  assert jax.tree.structure(q) == jax.tree.structure(params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(q)):
    assert a.shape == b.shape and a.dtype == b.dtype
    if not Q.is_quantized_weight(path):  # norms: bit for bit the same
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
      assert not np.array_equal(np.asarray(a), np.asarray(b))
  twice = Q.quantize_params(q, scheme)
  for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(twice)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=0)


def test_none_is_identity_and_bad_input_errors(tiny):
  _, params = tiny
  assert Q.quantize_params(params, "none") is params
  with pytest.raises(ValueError, match="unknown quantization scheme 'int2'"):
    Q.quantize_params(params, "int2")
  with pytest.raises(ValueError, match="unknown quantization scheme"):
    Q.quantized_size(params, "fp8")
  bad = {"layer_0": {"mlp": {"linear": jnp.ones((48, 8))}}}  # 48 is not a multiple of 32
  with pytest.raises(ValueError, match=r"layer_0/mlp/linear: int4 groups of 32 .* size 48"):
    Q.quantize_params(bad, "int4")


def test_quantized_size_counts_integers_and_scales(tiny):
  _, params = tiny
  cfg, _ = tiny
  total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  q8, q4 = Q.quantized_size(params, "int8"), Q.quantized_size(params, "int4")
  assert q8.float_bytes == q4.float_bytes == 4 * total
  assert q8.quantized_weights + q8.other_params == total
  # The embedding table alone: V*D int8 + one float32 scale per row; int4: V*D/2 + per group.
  emb = {"embedder": {"input_embedding": params["embedder"]["input_embedding"]}}
  v, d = cfg.vocab_size, cfg.embed_dim
  assert Q.quantized_size(emb, "int8").quantized_bytes == v * d + 4 * v
  assert Q.quantized_size(emb, "int4").quantized_bytes == v * d // 2 + 4 * v * (d // 32)
  assert q4.quantized_bytes < q8.quantized_bytes < q8.float_bytes
  assert Q.quantized_size(params, "none").ratio == 1.0


def test_quantized_logits_stay_close(tiny, quantized):
  cfg, params = tiny
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
  mask = jnp.ones_like(tokens, bool)
  from alignment.model import masks

  @jax.jit
  def logits(p):
    return transformer.forward(cfg, p, tokens, masks.positions_from_mask(mask),
                               masks.causal_mask(mask))[0]

  ref = logits(params)
  err = {s: float(jnp.linalg.norm(logits(q) - ref) / jnp.linalg.norm(ref))
         for s, q in quantized.items()}
  assert 0 < err["int8"] < 0.02
  assert err["int8"] < err["int4"] < 0.25


def test_270m_int8_keeps_the_greedy_token(embedded_gemma3):
  """The real model: int8 keeps the next-token choice; the table is 62% of the weights."""
  cfg, params, tokenizer = embedded_gemma3
  ids = jnp.asarray([tokenizer.encode("The capital of France is", add_bos=True)])
  mask = jnp.ones_like(ids, bool)
  from alignment.model import masks

  def last_logits(p):
    return transformer.forward(cfg, p, ids, masks.positions_from_mask(mask),
                               masks.causal_mask(mask))[0][0, -1]

  q8 = jax.jit(lambda p: Q.quantize_params(p, "int8"))(params)
  ref, got = last_logits(params), last_logits(q8)
  assert int(jnp.argmax(got)) == int(jnp.argmax(ref))
  assert float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref)) < 0.1
  size = Q.quantized_size(params, "int8")
  emb = params["embedder"]["input_embedding"].size
  assert 0.6 < emb / size.quantized_weights < 0.65
  assert 0.25 < size.ratio < 0.26
