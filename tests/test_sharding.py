"""Mesh construction, the logical-axis rule table, and training on several simulated meshes."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from alignment import model, sharding

TESTS = pathlib.Path(__file__).resolve().parent


def run_worker(args: list[str], devices: int, env: dict | None = None, timeout: int = 600):
  """Runs tests/tiny_training.py in a fresh process with `devices` simulated CPU devices."""
  full_env = dict(os.environ, JAX_PLATFORMS="cpu",
                  XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **(env or {}))
  return subprocess.run([sys.executable, str(TESTS / "tiny_training.py"), *args], env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def abstract_mesh(shape):
  return AbstractMesh(tuple(shape), sharding.AXES)


def test_mesh_config_resolves_minus_one_and_rejects_bad_shapes():
  assert sharding.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
  assert sharding.MeshConfig(1, 1, -1).shape(4) == (1, 1, 4)
  with pytest.raises(ValueError, match="needs 6 devices, but 8"):
    sharding.MeshConfig(2, 3, 1).shape(8)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.MeshConfig(-1, -1, 1).shape(8)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.MeshConfig(3, -1, 1).shape(8)


def test_make_mesh_uses_auto_axes():
  mesh = sharding.make_mesh(sharding.MeshConfig(1, -1, 1))
  assert mesh.axis_names == sharding.AXES
  assert mesh.size == len(jax.devices())
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("name", sorted(model.PRESETS))
def test_every_logical_axis_has_a_rule(name):
  rules = dict(sharding.LOGICAL_AXIS_RULES)
  specs = jax.tree.leaves(model.param_logical_axes(model.get_config(name)),
                          is_leaf=lambda x: isinstance(x, P))
  used = {axis for spec in specs for axis in spec if axis is not None}
  assert used <= set(rules), used - set(rules)


def test_rules_place_weights_and_replicate_indivisible_dims():
  cfg = model.get_config("gemma3_270m")  # 4 query heads, 1 KV head
  shardings = sharding.param_shardings(cfg, abstract_mesh((1, 2, 4)))
  layer = shardings["layer_0"]
  assert shardings["embedder"]["input_embedding"].spec == P("tensor", "fsdp")
  assert layer["attn"]["q_einsum"].spec == P("tensor", "fsdp", None)
  # One KV head cannot be split 4 ways: that dimension is replicated, the rest still split.
  assert layer["attn"]["kv_einsum"].spec == P(None, None, "fsdp", None)
  assert layer["mlp"]["gating_einsum"].spec == P(None, "fsdp", "tensor")
  assert layer["mlp"]["linear"].spec == P("tensor", "fsdp")
  assert layer["pre_attention_norm"]["scale"].spec == P("fsdp")
  # 640 is not divisible by an fsdp axis of 3: replicated rather than an error.
  odd = sharding.param_shardings(cfg, abstract_mesh((1, 3, 1)))
  assert odd["embedder"]["input_embedding"].spec == P("tensor", None)


def test_batch_sharding_splits_rows_over_data_and_fsdp():
  mesh = abstract_mesh((2, 2, 2))
  tree = {"tokens": jax.ShapeDtypeStruct((8, 5), np.int32),
          "w": jax.ShapeDtypeStruct((8,), np.float32)}
  out = sharding.batch_shardings(mesh, tree)
  assert out["tokens"].spec == P(("data", "fsdp"), None)
  assert out["w"].spec == P(("data", "fsdp"))
  with pytest.raises(ValueError, match=r"shape \(6, 5\).*divisible by data\*fsdp = 4"):
    sharding.batch_shardings(mesh, {"tokens": jax.ShapeDtypeStruct((6, 5), np.int32)})


def test_same_losses_on_every_mesh_and_parameters_really_split(tmp_path):
  result = tmp_path / "meshes.json"
  proc = run_worker(["meshes", "--meshes", "1,1,1;8,1,1;2,4,1;1,2,4", "--steps", "4",
                     "--grad_accum_steps", "2", "--result", str(result)], devices=8)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(result.read_text())
  reference = report["1,1,1"]["losses"]
  for mesh in ("8,1,1", "2,4,1", "1,2,4"):
    np.testing.assert_allclose(report[mesh]["losses"], reference, rtol=2e-5, err_msg=mesh)

  emb = "['params']['embedder']['input_embedding']"
  mlp = "['params']['layer_0']['mlp']['linear']"
  kv = "['params']['layer_0']['attn']['kv_einsum']"
  single, data, mixed = report["1,1,1"]["layout"], report["8,1,1"]["layout"], \
      report["1,2,4"]["layout"]
  assert single[emb]["num_devices"] == 1
  # Pure data parallelism: parameters replicated (whole) on all 8 devices.
  assert data[emb]["shard_shape"] == [512, 64]
  assert data[emb]["num_devices"] == 8
  # fsdp=2, tensor=4: [vocab 512, embed 64] is held as [128, 32] slices.
  assert mixed[emb]["spec"] == ["tensor", "fsdp"] and mixed[emb]["shard_shape"] == [128, 32]
  assert mixed[mlp]["shard_shape"] == [128 // 4, 64 // 2]
  assert mixed[kv]["spec"] == [None, None, "fsdp", None]  # one KV head: not split 4 ways
  # Adam moments and accumulated gradients live where their parameter lives.
  moments = [k for k in mixed if k.startswith("['opt_state']") and
             k.endswith("['layer_0']['mlp']['linear']")]
  assert len(moments) == 3, moments  # mu, nu, MultiSteps accumulator
  for key in moments:
    assert mixed[key]["spec"] == ["tensor", "fsdp"], key
    assert mixed[key]["shard_shape"] == mixed[mlp]["shard_shape"]
  # The frozen final norm has no optimizer state at all.
  assert not [k for k in mixed if k.startswith("['opt_state']") and "final_norm" in k]


LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.skipif(not LIBTPU, reason="AOT compilation for TPU needs the optional libtpu "
                    "package (pip install 'jax[tpu]')")
def test_aot_compile_for_tpu_topology_reports_per_chip_memory(tmp_path):
  code = """
import dataclasses, json, sys
from alignment import model, sharding
from alignment.training import aot, optimizer
# Dimensions that are multiples of 128 after a 4-way split, so TPU tile padding is nil.
cfg = model.get_config("tiny_gemma1", embed_dim=512, hidden_dim=1024, head_dim=128)
report = aot.aot_report("v5e:2x2", sharding.MeshConfig(1, -1, 1), cfg,
                        optimizer.OptimizerConfig(), batch_size=8, seq_len=32)
print("REPORT" + json.dumps(dataclasses.asdict(report)))
"""
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=TESTS.parent,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("REPORT"))
  report = json.loads(line[len("REPORT"):])
  assert report["num_chips"] == 4 and report["device_kind"] == "TPU v5 lite"
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  # Arguments per chip: a quarter of params + two Adam moments (f32) + counters + batch.
  cfg = model.get_config("tiny_gemma1", embed_dim=512, hidden_dim=1024, head_dim=128)
  state_bytes = 3 * 4 * cfg.num_params()
  assert state_bytes / 4 <= report["argument_bytes"] <= 1.05 * state_bytes / 4
  assert report["fits"] is True and report["peak_bytes"] < report["hbm_bytes"]
