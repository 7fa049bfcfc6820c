"""Unmerged LoRA (low-rank paths inside the projections) against merged weights."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import lora as L
from alignment import model as M
from alignment.model.low_rank import LowRank

ALL = ("q", "k", "v", "o", "gate", "up", "down")


@functools.lru_cache(maxsize=None)
def _setup(name: str, targets=ALL, rank: int = 4):
  """Model, base, LoRA config, non-trivial adapters and inputs (built once per session)."""
  cfg = M.get_config(name)
  base = M.init_params(cfg, jax.random.key(0))
  lcfg = L.LoraConfig(rank=rank, alpha=2.0 * rank + 1, targets=targets)
  adapters = L.init_adapters(cfg, lcfg, jax.random.key(1))
  # Non-zero B (fresh adapters have B = 0, which would hide any error in the path).
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  adapters = jax.tree.unflatten(
      tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, cfg.vocab_size)
  valid = jnp.ones((2, 12), bool).at[1, :3].set(False)  # left padding in row 1
  inputs = (tokens, M.positions_from_mask(valid), M.causal_mask(valid))
  return cfg, base, lcfg, adapters, inputs


def _logits_fns(cfg, lcfg, inputs):
  merged = jax.jit(lambda b, a: M.forward(cfg, L.merge(b, a, lcfg), *inputs)[0])
  unmerged = jax.jit(lambda b, a: L.lora_forward(cfg, b, a, lcfg, *inputs)[0])
  return merged, unmerged


def _only(adapters, keep: str):
  """The same adapter tree with every target but `keep` switched off (B = 0)."""
  return {layer: {name: ab if name == keep else {"a": ab["a"], "b": jnp.zeros_like(ab["b"])}
                  for name, ab in sites.items()} for layer, sites in adapters.items()}


@pytest.mark.parametrize("name", ["tiny_gemma1", "tiny_gemma2", "tiny_gemma3"])
def test_unmerged_forward_equals_merged_for_every_target(name):
  cfg, base, lcfg, adapters, inputs = _setup(name)
  merged, unmerged = _logits_fns(cfg, lcfg, inputs)
  plain = jax.jit(lambda b: M.forward(cfg, b, *inputs)[0])(base)
  for target in ALL + ("all",):
    tree = adapters if target == "all" else _only(adapters, target)
    want, got = merged(base, tree), unmerged(base, tree)
    # The adapters really move the logits, so agreement is not the trivial one.
    assert float(jnp.max(jnp.abs(want - plain))) > 1e-2, target
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5, err_msg=target)


def test_subset_of_targets_builds_only_those_paths():
  cfg, base, lcfg, adapters, inputs = _setup("tiny_gemma1", targets=("k", "o", "down"))
  paths = L.adapter_paths(adapters, lcfg)
  assert {layer: sorted(sites) for layer, sites in paths.items()} == {
      f"layer_{i}": ["down", "k", "o"] for i in range(cfg.num_layers)}
  merged, unmerged = _logits_fns(cfg, lcfg, inputs)
  np.testing.assert_allclose(unmerged(base, adapters), merged(base, adapters), rtol=1e-5,
                             atol=2e-5)


def test_adapter_gradients_equal_merged_and_base_gets_none():
  cfg, base, lcfg, adapters, (tokens, positions, mask) = _setup("tiny_gemma3")

  def ce(logits):
    return jnp.mean(jax.nn.logsumexp(logits[:, :-1], -1)
                    - jnp.take_along_axis(logits[:, :-1], tokens[:, 1:, None], -1)[..., 0])

  def merged_loss(params):
    base_ = jax.lax.stop_gradient(params["base"])
    return ce(M.forward(cfg, L.merge(base_, params["lora"], lcfg), tokens, positions, mask)[0])

  def unmerged_loss(params):
    return ce(L.lora_forward(cfg, params["base"], params["lora"], lcfg, tokens, positions,
                             mask)[0])

  params = {"base": base, "lora": adapters}
  want = jax.jit(jax.grad(merged_loss))(params)
  got = jax.jit(jax.grad(unmerged_loss))(params)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got["lora"])[0],
                          jax.tree.leaves(want["lora"])):
    assert float(jnp.max(jnp.abs(w))) > 0, path
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(got["base"]))


def test_unmerged_backward_skips_full_size_weight_gradients():
  """XLA's own FLOP count: the unmerged adapter gradient costs less than the merged one.

  With all 7 targets the merged backward computes every dL/dW (2 * tokens * |W| per weight);
  the unmerged one only rank-r products, so it must be cheaper by about that much.
  """
  cfg, base, lcfg, adapters, _ = _setup("tiny_gemma1", rank=2)
  tokens = jnp.zeros((2, 64), jnp.int32)
  valid = jnp.ones(tokens.shape, bool)
  args = (tokens, M.positions_from_mask(valid), M.causal_mask(valid))

  def flops(loss):
    compiled = jax.jit(jax.grad(loss)).lower(adapters).compile()
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]

  merged = flops(lambda a: jnp.sum(M.forward(cfg, L.merge(base, a, lcfg), *args,
                                             return_hidden=True)[0]))
  unmerged = flops(lambda a: jnp.sum(L.lora_forward(cfg, base, a, lcfg, *args,
                                                    return_hidden=True)[0]))
  # Weight gradients of the 7 projections: 2 * tokens * |W| FLOPs each.
  weights = sum(int(np.prod(x.shape)) for layer in range(cfg.num_layers)
                for x in jax.tree.leaves(base[f"layer_{layer}"]) if x.ndim > 1)
  assert merged - unmerged > 0.5 * 2 * tokens.size * weights, (merged, unmerged)


def test_low_rank_dropout_is_per_token_and_off_without_rng():
  d = 8
  x = jax.random.normal(jax.random.key(0), (2, 16, d))
  # a = I, b = I: delta = scale * dropout(x), so the mask is visible element by element.
  path = LowRank(jnp.eye(d), jnp.eye(d), scale=0.5, dropout=0.5, rng=jax.random.key(1))
  delta = np.asarray(path(x))
  kept = np.isclose(delta, np.asarray(x))  # 0.5 * x / (1 - 0.5) == x
  dropped = delta == 0
  assert np.all(kept | dropped)
  assert 0.3 < dropped.mean() < 0.7
  # A different mask for different tokens (not one per batch, as merging must use).
  assert not np.all(dropped[0, 0] == dropped[0, 1:]) or not np.all(dropped[0] == dropped[1])
  np.testing.assert_array_equal(path(x), path(x))  # deterministic given the key
  evaluation = LowRank(jnp.eye(d), jnp.eye(d), scale=0.5, dropout=0.5)
  np.testing.assert_allclose(evaluation(x), 0.5 * x, rtol=1e-6)


def test_lora_dropout_changes_only_training_forward():
  cfg, base, _, adapters, inputs = _setup("tiny_gemma1")
  lcfg = L.LoraConfig(rank=4, alpha=9.0, dropout=0.3)
  run = jax.jit(lambda rng: L.lora_forward(cfg, base, adapters, lcfg, *inputs,
                                           dropout_rng=rng)[0])
  evaluate = jax.jit(lambda: L.lora_forward(cfg, base, adapters, lcfg, *inputs)[0])()
  merged = jax.jit(lambda: M.forward(cfg, L.merge(base, adapters, lcfg), *inputs)[0])()
  np.testing.assert_allclose(evaluate, merged, rtol=1e-5, atol=2e-5)
  train = run(jax.random.key(7))
  assert float(jnp.max(jnp.abs(train - evaluate))) > 1e-3
  assert float(jnp.max(jnp.abs(run(jax.random.key(8)) - train))) > 1e-3


def test_scalar_head_takes_the_same_paths():
  cfg, base, lcfg, adapters, inputs = _setup("tiny_gemma1")
  head = M.init_scalar_head_params(cfg, jax.random.key(5), base)
  head["w"] = jax.random.normal(jax.random.key(6), head["w"].shape)
  merged = dict(head, backbone=L.merge(base, adapters, lcfg))
  want = jax.jit(lambda p: M.scalar_head_forward(cfg, p, *inputs))(merged)
  got = jax.jit(lambda p, a: M.scalar_head_forward(cfg, p, *inputs,
                                                   lora=L.adapter_paths(a, lcfg)))(head, adapters)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)  # |scores| ~ 12: float32 order


def test_bad_paths_are_rejected():
  cfg, base, lcfg, adapters, inputs = _setup("tiny_gemma1")
  paths = L.adapter_paths(adapters, lcfg)
  with pytest.raises(ValueError, match="layer_9"):
    M.forward(cfg, base, *inputs, lora={"layer_9": paths["layer_0"]})
  with pytest.raises(ValueError, match="unknown site"):
    M.forward(cfg, base, *inputs, lora={"layer_0": {"qq": paths["layer_0"]["q"]}})


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from alignment import lora as L, model as M, sharding
    cfg = M.get_config("tiny_gemma3")
    lcfg = L.LoraConfig(rank=4, alpha=8.0)
    base = M.init_params(cfg, jax.random.key(0))
    # A unit-stddev table (the default small one leaves gradients near rounding level).
    base["embedder"]["input_embedding"] /= M.layers.EMBED_INIT_STDDEV
    adapters = jax.tree.map(lambda x: x + 0.1, L.init_adapters(cfg, lcfg, jax.random.key(1)))
    tokens = jax.random.randint(jax.random.key(2), (4, 16), 0, cfg.vocab_size)
    valid = jnp.ones(tokens.shape, bool)
    def loss(base, adapters, tokens):
      logits = L.lora_forward(cfg, base, adapters, lcfg, tokens, M.positions_from_mask(valid),
                              M.causal_mask(valid))[0]
      return jnp.mean(jax.nn.logsumexp(logits, -1))
    grad = jax.value_and_grad(loss, argnums=1)
    want_loss, want_grads = jax.jit(grad)(base, adapters, tokens)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, tensor=2))
    base_s = sharding.param_shardings(cfg, mesh)
    lora_s = sharding.logical_to_shardings(L.adapter_logical_axes(cfg, lcfg),
                                           jax.eval_shape(lambda: adapters), mesh)
    got_loss, got_grads = jax.jit(grad, in_shardings=(base_s, lora_s, None),
                                  out_shardings=(None, lora_s))(
        jax.device_put(base, base_s), jax.device_put(adapters, lora_s), tokens)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    # Sharded reductions sum in another order: float32 rounding, amplified through 6 layers.
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(g, w, rtol=2e-3, atol=1e-3 * float(np.abs(w).max()))
    b = got_grads["layer_0"]["gate"]["b"]
    print(json.dumps({"spec": [str(s) for s in b.sharding.spec],
                      "shard": list(b.addressable_shards[0].data.shape), "shape": list(b.shape)}))
""")


def test_unmerged_lora_under_fsdp_and_tensor_sharding():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  # B of the gate adapter is [rank, mlp]; the rule table splits "mlp" over the tensor axis.
  assert report["shape"] == [4, 128]
  assert report["shard"] == [4, 64], report
