"""Sharded, streaming checkpoint loading (`checkpoints/slices.py`) on 8 simulated devices.

The sharded load must give the whole load's values bit for bit, on the target shardings, and
read from disk only the boxes this process's devices hold. The tests need 8 devices: run in a
process with fewer, the first test re-runs this file in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the others skip there).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from alignment import lora as lora_lib
from alignment import model as M
from alignment import sharding
from alignment.checkpoints import gguf as gguf_lib
from alignment.checkpoints import huggingface as hf
from alignment.checkpoints import slices
from alignment.checkpoints.flax_gemma import load_flax_gemma, load_flax_gemma_sharded
from alignment.checkpoints.loading import load_model, load_model_sharded

DEVICES = 8
HERE = pathlib.Path(__file__).resolve()
eight = pytest.mark.skipif(jax.device_count() != DEVICES,
                           reason="needs 8 devices (run by test_in_an_eight_device_process)")


@pytest.mark.skipif(jax.device_count() == DEVICES, reason="already in the 8-device process")
def test_in_an_eight_device_process():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
  done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                         str(HERE)], env=env, capture_output=True, text=True, timeout=900,
                        cwd=HERE.parents[1])
  assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
  assert " passed" in done.stdout and "failed" not in done.stdout


# ----------------------------------------------------------------------------- fixtures


def lively_params(cfg, seed=0):
  """Random parameters with unit-scale entries everywhere (norms included), so that a wrong
  box or transpose shows as a different value."""
  shapes = M.param_shapes(cfg)
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [np.asarray(jax.random.normal(k, s.shape, jnp.float32))
                                      for k, s in zip(keys, leaves)])


def mesh_of(data=1, fsdp=4, tensor=2):
  return sharding.make_mesh(sharding.MeshConfig(data, fsdp, tensor))


def flat(tree):
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same_and_placed(whole, sharded, targets):
  whole, sharded, targets = flat(whole), flat(sharded), flat(targets)
  assert whole.keys() == sharded.keys() == targets.keys()
  for name, value in sharded.items():
    assert value.dtype == jnp.float32, name
    assert value.sharding == targets[name], (name, value.sharding, targets[name])
    np.testing.assert_array_equal(np.asarray(value), np.asarray(whole[name]), err_msg=name)


@pytest.fixture(scope="module")
def tiny():
  cfg = M.get_config("tiny_gemma3")
  return cfg, lively_params(cfg)


@pytest.fixture(scope="module")
def hf_dir(tiny, tmp_path_factory):
  cfg, params = tiny
  return hf.save_safetensors(cfg, params, tmp_path_factory.mktemp("hf") / "model")


def split_into_shards(directory: pathlib.Path, tie_head: bool = True) -> pathlib.Path:
  """Rewrites model.safetensors as two files and an index (as large HF releases are), with
  a stored lm_head (equal to the embedding when `tie_head`)."""
  with safe_open(directory / "model.safetensors", framework="numpy") as f:
    tensors = {name: f.get_tensor(name) for name in f.keys()}
  head = tensors["model.embed_tokens.weight"].copy()
  if not tie_head:
    head[3, 5] += 1.0
  names = sorted(tensors)
  parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
           "model-00002-of-00002.safetensors": names[len(names) // 2:]}
  weight_map = {}
  for file, part in parts.items():
    chunk = {n: tensors[n] for n in part}
    if file.startswith("model-00002"):
      chunk["lm_head.weight"] = head
    save_file(chunk, directory / file)
    weight_map.update({n: file for n in chunk})
  (directory / "model.safetensors").unlink()
  (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return directory


def write_tiny_gguf(path: pathlib.Path, cfg, params) -> pathlib.Path:
  """A Gemma 3 GGUF of `params` in llama.cpp's layout (torch [out, in], norms as 1 + w),
  built here independently of the loader; matrices quantised to Q8_0 / Q5_0 / Q4_0 (32-value
  blocks), the embedding F16, norms F32."""
  n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
  Q = gguf.GGMLQuantizationType
  writer = gguf.GGUFWriter(str(path), "gemma3")
  for key, value in {"block_count": cfg.num_layers, "embedding_length": d,
                     "feed_forward_length": cfg.hidden_dim, "attention.head_count": n,
                     "attention.head_count_kv": k, "attention.key_length": h,
                     "attention.sliding_window": 8}.items():
    writer.add_uint32(f"gemma3.{key}", value)
  writer.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
  writer.add_float32("gemma3.rope.freq_base", 1e6)

  def add(name, value, qtype=Q.F32):
    value = np.ascontiguousarray(value, np.float32)
    if qtype == Q.F32:
      writer.add_tensor(name, value)
    elif qtype == Q.F16:
      writer.add_tensor(name, value.astype(np.float16))
    else:
      writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)

  add("token_embd.weight", params["embedder"]["input_embedding"], Q.F16)
  add("output_norm.weight", params["final_norm"]["scale"] + 1)
  for i in range(cfg.num_layers):
    p, blk = params[f"layer_{i}"], f"blk.{i}."
    attn = p["attn"]
    add(blk + "attn_q.weight", attn["q_einsum"].transpose(0, 2, 1).reshape(n * h, d), Q.Q8_0)
    add(blk + "attn_k.weight", attn["kv_einsum"][0].transpose(0, 2, 1).reshape(k * h, d), Q.Q5_0)
    add(blk + "attn_v.weight", attn["kv_einsum"][1].transpose(0, 2, 1).reshape(k * h, d), Q.Q8_0)
    add(blk + "attn_output.weight", attn["attn_vec_einsum"].transpose(2, 0, 1).reshape(d, n * h),
        Q.Q4_0)
    add(blk + "ffn_gate.weight", p["mlp"]["gating_einsum"][0].T, Q.Q8_0)
    add(blk + "ffn_up.weight", p["mlp"]["gating_einsum"][1].T, Q.Q5_0)
    add(blk + "ffn_down.weight", p["mlp"]["linear"].T, Q.Q8_0)
    add(blk + "attn_q_norm.weight", attn["_query_norm"]["scale"] + 1)
    add(blk + "attn_k_norm.weight", attn["_key_norm"]["scale"] + 1)
    for ours, theirs in (("pre_attention_norm", "attn_norm"),
                         ("post_attention_norm", "post_attention_norm"),
                         ("pre_ffw_norm", "ffn_norm"), ("post_ffw_norm", "post_ffw_norm")):
      add(blk + theirs + ".weight", p[ours]["scale"] + 1)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


@pytest.fixture(scope="module")
def gguf_path(tiny, tmp_path_factory):
  cfg, params = tiny
  return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", cfg, params)


class Counting:
  """A store wrapper that records every (name, box) asked for and the values returned."""

  def __init__(self, store):
    self.store, self.calls = store, []

  def read(self, name, box):
    x = self.store.read(name, box)
    self.calls.append((name, box, x.size))
    return x


# ----------------------------------------------------------------------------- equality


@eight
@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (1, 8, 1), (2, 2, 2)])
def test_safetensors_sharded_equals_whole_load(hf_dir, mesh_shape):
  mesh = mesh_of(*mesh_shape)
  cfg, whole = hf.load_safetensors(hf_dir)
  cfg_s, sharded = hf.load_safetensors_sharded(hf_dir, lambda c: sharding.param_shardings(c, mesh))
  assert cfg_s == cfg
  assert_same_and_placed(whole, sharded, sharding.param_shardings(cfg, mesh))


@eight
def test_sharded_index_files_and_tied_head(hf_dir, tmp_path):
  import shutil
  directory = split_into_shards(pathlib.Path(shutil.copytree(hf_dir, tmp_path / "split")))
  mesh = mesh_of()
  shardings_of = lambda c: sharding.param_shardings(c, mesh)
  cfg, whole = hf.load_safetensors(hf_dir)
  _, sharded = hf.load_safetensors_sharded(directory, shardings_of)
  assert_same_and_placed(whole, sharded, shardings_of(cfg))
  untied = split_into_shards(pathlib.Path(shutil.copytree(hf_dir, tmp_path / "untied")),
                             tie_head=False)
  with pytest.raises(ValueError, match=r"untied.*lm_head.weight differs"):
    hf.load_safetensors_sharded(untied, shardings_of)


@eight
@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (1, 8, 1)])
def test_gguf_sharded_equals_whole_load(gguf_path, tiny, mesh_shape):
  mesh = mesh_of(*mesh_shape)
  cfg, whole = gguf_lib.load_gguf(gguf_path, expected=None)
  cfg_s, sharded = gguf_lib.load_gguf_sharded(
      gguf_path, lambda c: sharding.param_shardings(c, mesh), expected=None)
  assert cfg_s == cfg
  assert_same_and_placed(whole, sharded, sharding.param_shardings(cfg, mesh))
  # The file holds the quantised model, not `tiny`'s exact values; the norms are exact (F32).
  np.testing.assert_array_equal(np.asarray(sharded["final_norm"]["scale"]),
                                tiny[1]["final_norm"]["scale"] + 1 - 1)


@eight
def test_flax_orbax_sharded_equals_whole_load(tmp_path):
  sys.path.insert(0, str(HERE.parent))
  from test_flax_gemma_checkpoint import bf16_params, write_official
  cfg = M.get_config("tiny_gemma3")
  path = write_official(tmp_path / "ckpt", cfg, bf16_params(cfg), transposed_gating=True,
                        pad_rows=128)
  mesh = mesh_of()
  shardings_of = lambda c: sharding.param_shardings(c, mesh)
  cfg_w, whole = load_flax_gemma(path)
  cfg_s, sharded = load_flax_gemma_sharded(path, shardings_of)
  assert cfg_s == cfg_w
  assert_same_and_placed(whole, sharded, shardings_of(cfg_w))
  mha = M.get_config("tiny_gemma1", num_kv_heads=4)
  path = write_official(tmp_path / "mha", mha, bf16_params(mha, seed=1), qkv=True)
  _, whole = load_flax_gemma(path, mha)
  _, sharded = load_flax_gemma_sharded(path, shardings_of, mha)
  assert_same_and_placed(whole, sharded, shardings_of(mha))


# ----------------------------------------------------------------------------- what is read


def _leaf_boxes(calls, name):
  return [(box, size) for n, box, size in calls if n == name]


@eight
def test_each_device_reads_only_its_slice_of_safetensors(hf_dir, tiny):
  cfg, _ = tiny
  mesh = mesh_of(1, 8, 1)  # every `embed` axis split 8 ways
  path, cfg, family, located, _, _ = hf._locate(hf_dir, "float32")
  store = Counting(hf.SafetensorsStore(located))
  slices.place(hf.hf_leaves(cfg, store, family), sharding.param_shardings(cfg, mesh))
  numel = lambda name: math.prod(hf.expected_hf_shapes(cfg)[name])
  # Split leaves: 8 reads, each exactly 1/8 of the tensor, together the tensor once.
  for name in ("model.embed_tokens.weight", "model.norm.weight",
               "model.layers.0.self_attn.q_proj.weight",
               "model.layers.2.self_attn.o_proj.weight", "model.layers.5.mlp.down_proj.weight",
               "model.layers.1.mlp.gate_proj.weight"):
    reads = _leaf_boxes(store.calls, name)
    assert len(reads) == DEVICES, name
    assert all(size == numel(name) // DEVICES for _, size in reads), (name, reads)
    assert len({str(box) for box, _ in reads}) == DEVICES, name  # 8 different slices
  # Replicated leaves (QK-norm scales, [head_dim]): read once for the process, not once per
  # device.
  for name in ("model.layers.0.self_attn.k_norm.weight", "model.layers.3.self_attn.q_norm.weight"):
    assert _leaf_boxes(store.calls, name) == [((slice(0, numel(name)),), numel(name))]
  total = sum(size for _, _, size in store.calls)
  assert total == sum(math.prod(s) for s in hf.expected_hf_shapes(cfg).values())


@eight
def test_gguf_dequantises_only_the_blocks_of_each_box(gguf_path, monkeypatch):
  file = gguf_lib.read_gguf(gguf_path)
  cfg = gguf_lib.config_from_gguf(file)
  mesh = mesh_of(1, 8, 1)
  dequantised = []
  real = gguf.quants.dequantize
  monkeypatch.setattr(gguf.quants, "dequantize",
                      lambda data, qtype: dequantised.append(r := real(data, qtype)) or r)
  store = Counting(file)
  slices.place(gguf_lib.gguf_leaves(store, cfg), sharding.param_shardings(cfg, mesh))
  assert len(dequantised) == len(store.calls)
  for (name, box, size), values in zip(store.calls, dequantised):
    info = file.tensors[name]
    block = gguf.GGML_QUANT_SIZES[info.qtype][0]
    cols = box[-1]
    covering = (-(-cols.stop // block) - cols.start // block) * block  # whole blocks
    assert values.size == size // (cols.stop - cols.start) * covering, (name, box)
    if size < math.prod(info.shape):  # a split leaf: never dequantised whole
      assert values.size < math.prod(info.shape), (name, box)
  # q_proj [N*H, D=64] is split along its 64 quantised columns: 8 values per device, one
  # 32-value Q8_0 block dequantised for each.
  q = [values.size for (name, _, _), values in zip(store.calls, dequantised)
       if name == "blk.0.attn_q.weight"]
  assert q == [cfg.num_heads * cfg.head_dim * 32] * DEVICES


@eight
def test_a_process_reads_only_the_boxes_of_its_devices(hf_dir):
  """Simulates one host of two: its devices' part of the indices map, and nothing else,
  is read (`place_leaf` asks `addressable_devices_indices_map`, which is that part)."""
  mesh = mesh_of(1, 8, 1)
  path, cfg, family, located, _, _ = hf._locate(hf_dir, "float32")
  store = Counting(hf.SafetensorsStore(located))
  leaf = hf.hf_leaves(cfg, store, family)["layer_0"]["mlp"]["linear"]  # [F, D], D split
  target = sharding.param_shardings(cfg, mesh)["layer_0"]["mlp"]["linear"]
  every = target.devices_indices_map(leaf.shape)
  assert target.addressable_devices_indices_map(leaf.shape) == every  # one process here
  host_devices = set(mesh.devices.flat[4:])  # the second host's four chips
  mine = {d: i for d, i in every.items() if d in host_devices}
  boxes = slices.boxes_to_read(leaf.shape, mine)
  for box, _ in boxes:
    leaf.read(box)
  # down_proj is stored [D, F]: each box is a range of D rows, all F columns.
  bounds = lambda box: tuple((s.start, s.stop) for s in box)
  assert {bounds(box) for _, box, _ in store.calls} == {
      bounds((slices.normalise(i, leaf.shape)[1], slice(0, cfg.hidden_dim)))
      for i in mine.values()}
  assert len(store.calls) == 4
  assert sum(size for _, _, size in store.calls) == math.prod(leaf.shape) // 2
  assert all(b[0].start >= cfg.embed_dim // 2 for _, b, _ in store.calls)  # its half only


def test_boxes_to_read_normalises_and_groups_devices():
  shape = (6, 4)
  indices = {"a": (slice(None), slice(0, 2)), "b": (slice(0, 6), slice(0, 2)),
             "c": (slice(None), slice(2, None))}
  assert slices.boxes_to_read(shape, indices) == [
      ((slice(0, 6), slice(0, 2)), ["a", "b"]), ((slice(0, 6), slice(2, 4)), ["c"])]
  with pytest.raises(ValueError, match="only step 1"):
    slices.normalise((slice(0, 6, 2),), shape)


def test_layout_helpers_match_the_whole_array_conversions():
  rng = np.random.default_rng(0)
  n, h, d, f = 3, 4, 5, 6
  q = rng.normal(size=(n * h, d)).astype(np.float32)
  o = rng.normal(size=(d, n * h)).astype(np.float32)
  g = rng.normal(size=(f, d)).astype(np.float32)
  tensors = {"q": q, "o": o, "g": g}

  class Store:
    def read(self, name, box):
      return tensors[name][box]

  store = Store()
  wholes = {"q": (slices.heads_in(store, "q", n, h, d), q.reshape(n, h, d).transpose(0, 2, 1)),
            "o": (slices.heads_out(store, "o", n, h, d), o.T.reshape(n, h, d)),
            "g": (slices.stacked([slices.transposed(store, "g", (f, d))] * 2),
                  np.stack([g.T, g.T]))}
  for name, (leaf, want) in wholes.items():
    assert leaf.shape == want.shape, name
    for _ in range(20):
      box = []
      for size in want.shape:
        a = int(rng.integers(0, size))
        box.append(slice(a, int(rng.integers(a + 1, size + 1))))
      np.testing.assert_array_equal(leaf.read(tuple(box)), want[tuple(box)], err_msg=name)


# ----------------------------------------------------------------------------- load_model


@eight
def test_load_model_sharded_merges_adapters_and_checks_finite(hf_dir, tiny, tmp_path):
  cfg, _ = tiny
  mesh = mesh_of()
  lcfg = lora_lib.LoraConfig(rank=2, targets=("q", "v", "down"))
  adapters = lora_lib.init_adapters(cfg, lcfg, jax.random.key(3))
  adapters = jax.tree.map(lambda x: x + 0.1, adapters)  # b starts at zero: make it count
  lora_lib.save_adapters(tmp_path / "adapters.npz", adapters, lcfg)
  section = {"checkpoint": str(hf_dir), "adapters": str(tmp_path / "adapters.npz")}
  cfg_w, whole, _ = load_model(section)
  cfg_s, sharded, _ = load_model_sharded(section, mesh)
  assert cfg_s == cfg_w
  targets = flat(sharding.param_shardings(cfg_w, mesh))
  for name, value in flat(sharded).items():
    assert value.sharding == targets[name], name
    np.testing.assert_allclose(np.asarray(value), np.asarray(flat(whole)[name]), rtol=1e-6,
                               atol=1e-6, err_msg=name)
  assert not np.array_equal(np.asarray(sharded["layer_0"]["attn"]["q_einsum"]),
                            np.asarray(load_model({"checkpoint": str(hf_dir)})[1]
                                       ["layer_0"]["attn"]["q_einsum"]))
  # A NaN in one stored tensor is found on the sharded arrays too, and named.
  _, params = tiny
  bad = jax.tree.map(np.copy, params)
  bad["layer_4"]["mlp"]["linear"][7, 9] = np.nan
  bad_dir = hf.save_safetensors(cfg, bad, tmp_path / "bad")
  with pytest.raises(ValueError, match=r"layer_4/mlp/linear holds NaN"):
    load_model_sharded({"checkpoint": str(bad_dir)}, mesh)


@eight
def test_load_model_sharded_random_initialises_into_shards():
  mesh = mesh_of()
  section = {"checkpoint": "random", "preset": "tiny_gemma2", "seed": 4}
  cfg, whole, _ = load_model(section)
  _, sharded, _ = load_model_sharded(section, mesh)
  assert_same_and_placed(whole, sharded, sharding.param_shardings(cfg, mesh))
