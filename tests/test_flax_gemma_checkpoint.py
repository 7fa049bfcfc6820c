"""Official Flax Gemma checkpoints: synthetic tiny ones in the released layout, written by orbax.

The writer here builds the released layout on its own (einsum weights under `w`, flat
'transformer/...' keys or nested dicts, `qkv_einsum` for multi-head models, [2, F, D] gating,
padded embedding rows, bfloat16 storage), so the loader is checked against that layout rather
than against itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alignment import model as M
from alignment.checkpoints.flax_gemma import load_flax_gemma


@functools.lru_cache(maxsize=None)
def bf16_params(cfg: M.ModelConfig, seed: int = 0):
  """Random parameters (norm scales included) that bfloat16 storage represents exactly."""
  params = M.init_params(cfg, jax.random.key(seed))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [(x + 0.5 * jax.random.normal(k, x.shape) if x.ndim == 1 else x)
            .astype(jnp.bfloat16).astype(jnp.float32) for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


def write_official(path, cfg, params, *, qkv=False, transposed_gating=False, pad_rows=0,
                   flat_keys=True):
  """Saves `params` the way the released Gemma checkpoints lay them out."""
  store = lambda x: np.asarray(x).astype(ml_dtypes.bfloat16)
  tree = {}
  embedding = np.asarray(params["embedder"]["input_embedding"])
  padding = np.random.default_rng(0).normal(size=(pad_rows, cfg.embed_dim))
  tree["transformer/embedder"] = {"input_embedding": store(np.concatenate([embedding, padding]))}
  tree["transformer/final_norm"] = {"scale": store(params["final_norm"]["scale"])}
  for i in range(cfg.num_layers):
    layer, pre = params[f"layer_{i}"], f"transformer/layer_{i}/"
    attn = layer["attn"]
    if qkv:
      tree[pre + "attn/qkv_einsum"] = {"w": store(np.concatenate(
          [np.asarray(attn["q_einsum"])[None], np.asarray(attn["kv_einsum"])]))}
    else:
      tree[pre + "attn/q_einsum"] = {"w": store(attn["q_einsum"])}
      tree[pre + "attn/kv_einsum"] = {"w": store(attn["kv_einsum"])}
    tree[pre + "attn/attn_vec_einsum"] = {"w": store(attn["attn_vec_einsum"])}
    for norm in ("_query_norm", "_key_norm"):
      if norm in attn:
        tree[pre + "attn/" + norm] = {"scale": store(attn[norm]["scale"])}
    for norm in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"):
      if norm in layer:
        tree[pre + norm] = {"scale": store(layer[norm]["scale"])}
    gating = np.asarray(layer["mlp"]["gating_einsum"])
    tree[pre + "mlp/gating_einsum"] = {
        "w": store(gating.transpose(0, 2, 1) if transposed_gating else gating)}
    tree[pre + "mlp/linear"] = {"w": store(layer["mlp"]["linear"])}
  if not flat_keys:
    nested = {}
    for key, value in tree.items():
      node = nested
      for part in key.split("/")[:-1]:
        node = node.setdefault(part, {})
      node[key.split("/")[-1]] = value
    tree = nested
  ocp.PyTreeCheckpointer().save(path, tree)
  return path


def assert_trees_equal(a, b):
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(b)}
  assert flat_a.keys() == flat_b.keys()
  for name in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[name]), np.asarray(flat_b[name]),
                                  err_msg=name)


def test_gemma3_layout_with_padding_and_transposed_gating(tmp_path):
  """Config inferred from shapes; padding rows cut; logits equal those of the source params."""
  cfg = M.get_config("tiny_gemma3")
  params = bf16_params(cfg)
  path = write_official(tmp_path / "ckpt", cfg, params, transposed_gating=True, pad_rows=128)
  loaded_cfg, loaded = load_flax_gemma(path)
  assert loaded_cfg == cfg
  assert_trees_equal(loaded, params)
  tokens = jnp.arange(12)[None] * 37 % cfg.vocab_size
  valid = jnp.ones_like(tokens, bool)
  run = lambda p: M.forward(cfg, p, tokens, M.positions_from_mask(valid), M.causal_mask(valid))[0]
  np.testing.assert_array_equal(np.asarray(run(loaded)), np.asarray(run(params)))


def test_multi_head_qkv_einsum_nested_layout(tmp_path):
  """Gemma 1 7B-style MHA (qkv_einsum), nested keys, [2, D, F] gating, explicit config."""
  cfg = M.get_config("tiny_gemma1", num_kv_heads=4)
  params = bf16_params(cfg, seed=1)
  path = write_official(tmp_path / "ckpt", cfg, params, qkv=True, flat_keys=False)
  loaded_cfg, loaded = load_flax_gemma(path, cfg)
  assert loaded_cfg == cfg
  assert_trees_equal(loaded, params)
  # No preset has 4 KV heads at these sizes: the error lists the candidates and differences.
  with pytest.raises(ValueError, match=r"no preset has these shapes[\s\S]*tiny_gemma1: "
                                       r"num_kv_heads=1"):
    load_flax_gemma(path)


def test_loads_in_bfloat16(tmp_path):
  cfg = M.get_config("tiny_gemma2")
  params = bf16_params(cfg, seed=2)
  path = write_official(tmp_path / "ckpt", cfg, params, transposed_gating=True)
  loaded_cfg, loaded = load_flax_gemma(path, dtype="bfloat16")
  assert loaded_cfg == cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
  assert all(x.dtype == ml_dtypes.bfloat16 for x in jax.tree.leaves(loaded))
  assert_trees_equal(loaded, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_mismatched_config_names_parameter_and_shapes(tmp_path):
  cfg = M.get_config("tiny_gemma2")
  path = write_official(tmp_path / "ckpt", cfg, bf16_params(cfg))
  wrong = cfg.replace(hidden_dim=96)
  with pytest.raises(ValueError, match=r"layer_0/mlp/linear: expected shape \(96, 64\), "
                                       r"found \(128, 64\)"):
    load_flax_gemma(path, wrong)
  with pytest.raises(ValueError, match="fewer than vocab_size=1024"):
    load_flax_gemma(path, cfg.replace(vocab_size=1024))


def test_missing_or_unreadable_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    load_flax_gemma(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises((ValueError, FileNotFoundError), match="empty"):
    load_flax_gemma(tmp_path / "empty")
