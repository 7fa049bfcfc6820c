"""HF safetensors export/import, checked against transformers' own Gemma implementations.

Each tiny config is exported with `save_safetensors`, loaded by transformers (float32, eager
attention, CPU) and compared on logits and on 32 greedy tokens; prompts are longer than the
tiny sliding window (8) so the local/global layer pattern and the window band are exercised.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from safetensors import safe_open

from alignment import model as M
from alignment.model.layers import EMBED_INIT_STDDEV
from alignment.checkpoints import huggingface as hf

CASES = {
    "tiny_gemma1": M.get_config("tiny_gemma1"),
    "tiny_gemma2": M.get_config("tiny_gemma2"),
    "tiny_gemma3": M.get_config("tiny_gemma3"),
    # Linear RoPE scaling on global layers, a query scale other than head_dim, final soft-cap.
    "tiny_gemma3_scaled": M.get_config(
        "tiny_gemma3", rope_scale_global=8.0, query_pre_attn_scalar=24,
        final_logit_soft_cap=30.0),
}
PROMPT_LEN, PADS, NEW_TOKENS = 20, (0, 5, 11), 32


@functools.lru_cache(maxsize=None)
def random_params(cfg: M.ModelConfig, seed: int = 0):
  """Random weights, norm scales included (init leaves them at 0, which would hide a swap), and a
  unit-stddev embedding table (the default small one gives near-zero logits, a weak check)."""
  params = M.init_params(cfg, jax.random.key(seed))
  params["embedder"]["input_embedding"] = params["embedder"]["input_embedding"] / EMBED_INIT_STDDEV
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [x + 0.5 * jax.random.normal(k, x.shape) if x.ndim == 1 else x
            for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


def prompts(cfg: M.ModelConfig):
  """Left-padded batch: tokens, validity mask and RoPE positions."""
  tokens = jax.random.randint(jax.random.key(7), (len(PADS), PROMPT_LEN), 3, cfg.vocab_size)
  valid = jnp.arange(PROMPT_LEN)[None, :] >= jnp.array(PADS)[:, None]
  tokens = jnp.where(valid, tokens, 0)
  return tokens, valid, M.positions_from_mask(valid)


def greedy(cfg: M.ModelConfig, params, tokens, valid, steps: int):
  """Greedy decoding with our KV cache: a jitted prefill + scan over single-token steps."""
  batch, length = tokens.shape
  slots = length + steps

  @jax.jit
  def run(params, tokens, valid):
    cache = M.init_cache(cfg, batch, slots)
    seen = jnp.zeros((batch, slots), bool).at[:, :length].set(valid)
    prefill_mask = jnp.tril(jnp.ones((length, slots), bool))[None] & seen[:, None, :]
    positions = M.positions_from_mask(valid)
    logits, cache = M.forward(cfg, params, tokens, positions, prefill_mask, cache)

    def step(carry, _):
      token, position, cache, seen = carry
      seen = seen | (jnp.arange(slots) == cache["index"])[None]
      logits, cache = M.forward(cfg, params, token[:, None], position[:, None],
                                seen[:, None, :], cache)
      return (jnp.argmax(logits[:, -1], -1), position + 1, cache, seen), token

    first = jnp.argmax(logits[:, -1], -1)
    carry = (first, positions[:, -1] + 1, cache, seen)
    _, generated = jax.lax.scan(step, carry, None, length=steps)
    return generated.T

  return np.asarray(run(params, tokens, valid))


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
  cfg = CASES[request.param]
  params = random_params(cfg)
  out = hf.save_safetensors(cfg, params, tmp_path_factory.mktemp(request.param) / "export")
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      out, dtype=torch.float32, attn_implementation="eager").eval()
  return cfg, params, out, reference


def test_exported_model_loads_as_the_right_transformers_class(exported):
  cfg, _, out, reference = exported
  family = hf.infer_family(cfg)
  assert type(reference).__name__ == {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                                      "gemma3": "Gemma3ForCausalLM"}[family]
  assert sum(p.numel() for p in reference.parameters()) == cfg.num_params()
  assert reference.generation_config.bos_token_id == 2
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json",
                                     "model.safetensors"]


def test_logits_match_transformers(exported):
  cfg, params, _, reference = exported
  tokens, valid, positions = prompts(cfg)
  ours, _ = jax.jit(M.forward, static_argnums=0)(cfg, params, tokens, positions,
                                                 M.causal_mask(valid))
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(np.asarray(tokens)),
                       attention_mask=torch.tensor(np.asarray(valid, np.int64)),
                       position_ids=torch.tensor(np.asarray(positions))).logits.numpy()
  real = np.asarray(valid)
  ours, theirs = np.asarray(ours)[real], theirs[real]
  assert np.abs(theirs).max() > 1.0  # the comparison is not between near-zero logits
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("exported", ["tiny_gemma1", "tiny_gemma2", "tiny_gemma3"],
                         indirect=True)
def test_greedy_generation_matches_transformers(exported):
  cfg, params, _, reference = exported
  tokens, valid, _ = prompts(cfg)
  ours = greedy(cfg, params, tokens, valid, NEW_TOKENS)
  reference.generation_config.eos_token_id = None  # always generate NEW_TOKENS tokens
  with torch.no_grad():
    theirs = reference.generate(
        input_ids=torch.tensor(np.asarray(tokens)),
        attention_mask=torch.tensor(np.asarray(valid, np.int64)),
        max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0).numpy()
  assert theirs.shape == (len(PADS), PROMPT_LEN + NEW_TOKENS)
  np.testing.assert_array_equal(ours, theirs[:, PROMPT_LEN:])


def assert_trees_equal(a, b):
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(b)}
  assert flat_a.keys() == flat_b.keys()
  for name in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[name]), np.asarray(flat_b[name]),
                                  err_msg=name)


def test_save_then_load_round_trips_exactly(exported):
  cfg, params, out, _ = exported
  loaded_cfg, loaded = hf.load_safetensors(out)
  assert loaded_cfg == cfg
  assert_trees_equal(loaded, params)


def test_transformers_sharded_checkpoint_loads(exported, tmp_path):
  """A sharded checkpoint written by transformers itself (index + several files)."""
  cfg, params, _, reference = exported
  reference.save_pretrained(tmp_path, max_shard_size="100KB")
  assert (tmp_path / "model.safetensors.index.json").is_file()
  assert len(list(tmp_path.glob("*.safetensors"))) > 1
  loaded_cfg, loaded = hf.load_safetensors(tmp_path)
  assert loaded_cfg == cfg
  assert_trees_equal(loaded, params)


def test_bfloat16_export_and_load(tmp_path):
  cfg = CASES["tiny_gemma2"]
  params = random_params(cfg, seed=3)
  out = hf.save_safetensors(cfg, params, tmp_path / "bf16", dtype="bfloat16")
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  with safe_open(out / "model.safetensors", framework="numpy") as f:
    assert f.get_slice("model.layers.0.mlp.up_proj.weight").get_dtype() == "BF16"
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  loaded_cfg, loaded = hf.load_safetensors(out, dtype="bfloat16")
  assert loaded_cfg == cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
  assert all(x.dtype == ml_dtypes.bfloat16 for x in jax.tree.leaves(loaded))
  assert_trees_equal(loaded, rounded)
  _, as_f32 = hf.load_safetensors(out / "model.safetensors")  # a file path works too
  assert_trees_equal(as_f32, jax.tree.map(lambda x: x.astype(jnp.float32), rounded))


def test_multimodal_gemma3_checkpoint_loads_its_text_decoder(tmp_path):
  """Gemma3ForConditionalGeneration files: nested text_config, prefixed names, vision weights."""
  cfg = CASES["tiny_gemma3"]
  params = random_params(cfg, seed=4)
  text = hf.model_config_to_hf_config(cfg)
  tensors = {name.replace("model.", "model.language_model.", 1): value for name, value in
             safetensors.numpy.load_file(hf.save_safetensors(cfg, params, tmp_path / "t")
                                         / "model.safetensors").items()}
  tensors["model.vision_tower.patch_embedding.weight"] = np.zeros((4, 3), np.float32)
  (tmp_path / "mm").mkdir()
  safetensors.numpy.save_file(tensors, tmp_path / "mm" / "model.safetensors")
  (tmp_path / "mm" / "config.json").write_text(json.dumps(
      {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
       "text_config": text, "vision_config": {"hidden_size": 4}}))
  loaded_cfg, loaded = hf.load_safetensors(tmp_path / "mm")
  assert loaded_cfg == cfg
  assert_trees_equal(loaded, params)


def test_hub_configs_are_read_as_the_presets():
  """config.json files as released on the Hub (legacy keys, omitted fields, 'gelu')."""
  gemma_2b = {
      "model_type": "gemma", "hidden_act": "gelu", "hidden_size": 2048, "head_dim": 256,
      "intermediate_size": 16384, "num_attention_heads": 8, "num_hidden_layers": 18,
      "num_key_value_heads": 1, "rms_norm_eps": 1e-06, "rope_scaling": None,
      "rope_theta": 10000.0, "vocab_size": 256000}
  assert hf.hf_config_to_model_config(gemma_2b) == M.get_config("gemma_2b", vocab_size=256000)
  gemma2_2b = {
      "model_type": "gemma2", "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
      "cache_implementation": "hybrid", "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
      "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
      "intermediate_size": 9216, "num_attention_heads": 8, "num_hidden_layers": 26,
      "num_key_value_heads": 4, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
      "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 256000}
  assert hf.hf_config_to_model_config(gemma2_2b) == M.get_config("gemma2_2b",
                                                                  vocab_size=256000)
  gemma3_270m = {
      "model_type": "gemma3_text", "attn_logit_softcapping": None, "head_dim": 256,
      "final_logit_softcapping": None, "hidden_activation": "gelu_pytorch_tanh",
      "hidden_size": 640, "intermediate_size": 2048, "num_attention_heads": 4,
      "num_hidden_layers": 18, "num_key_value_heads": 1, "query_pre_attn_scalar": 256,
      "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
      "sliding_window": 512, "vocab_size": 262144, "use_bidirectional_attention": False,
      "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3}
  assert hf.hf_config_to_model_config(gemma3_270m) == M.get_config("gemma3_270m")
  # A multimodal text_config omits the head counts: transformers' defaults apply.
  gemma3_4b = {"model_type": "gemma3", "text_config": {
      "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
      "num_hidden_layers": 34, "sliding_window": 1024,
      "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}}
  assert hf.hf_config_to_model_config(gemma3_4b) == M.get_config("gemma3_4b")
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    hf.hf_config_to_model_config({**gemma2_2b, "rope_scaling": {"rope_type": "yarn"}})


def test_mis_shaped_tensor_is_named_with_both_shapes(tmp_path):
  cfg = CASES["tiny_gemma1"]
  out = hf.save_safetensors(cfg, random_params(cfg), tmp_path / "bad")
  tensors = safetensors.numpy.load_file(out / "model.safetensors")
  tensors["model.layers.1.self_attn.q_proj.weight"] = np.zeros((48, 64), np.float32)
  safetensors.numpy.save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight.*"
                                       r"expected shape \(64, 64\), found \(48, 64\)"):
    hf.load_safetensors(out)
  del tensors["model.norm.weight"]
  safetensors.numpy.save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"missing tensor model\.norm\.weight"):
    hf.load_safetensors(out)


def test_missing_or_bad_config_is_reported(tmp_path):
  cfg = CASES["tiny_gemma1"]
  out = hf.save_safetensors(cfg, random_params(cfg), tmp_path / "ckpt")
  (out / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=str(out / "config.json")):
    hf.load_safetensors(out)
  (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
  with pytest.raises(ValueError, match=r"config\.json.*model_type 'llama' is not supported"):
    hf.load_safetensors(out)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    hf.load_safetensors(tmp_path / "nowhere")


def test_export_refuses_a_family_that_cannot_express_the_config(tmp_path):
  cfg = CASES["tiny_gemma2"]
  with pytest.raises(ValueError, match="Gemma 1 has no post-attention"):
    hf.save_safetensors(cfg, random_params(cfg), tmp_path / "x", family="gemma")
  assert not (tmp_path / "x").exists()


def test_interrupted_export_leaves_the_previous_one_intact(tmp_path, monkeypatch):
  cfg = CASES["tiny_gemma1"]
  old_params = random_params(cfg, seed=1)
  out = hf.save_safetensors(cfg, old_params, tmp_path / "export")

  def crash(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
      f.write(b"partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(hf, "save_file", crash)
  with pytest.raises(KeyboardInterrupt):
    hf.save_safetensors(cfg, random_params(cfg, seed=2), out)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp dirs left
  assert_trees_equal(hf.load_safetensors(out)[1], old_params)
