"""One entry for jobs: a model section of a config -> (ModelConfig, params, tokenizer).

`checkpoint` chooses the source:
  "embedded"          the Gemma 3 270M base model shipped with the package (GGUF)
  "random"            random initialisation of `preset` (tests, speed benchmarks); with a
                      `tokenizer`, the vocabulary is resized to match it
  path/to/x.gguf      a GGUF file of a Gemma 3 model
  path/to/hf_dir      a Hugging Face safetensors checkpoint (config.json beside the weights)
  path/to/flax_dir    an official Flax/orbax Gemma checkpoint
`adapters` (optional): a LoRA adapters.npz (e.g. an SFT run's) merged into the weights after
loading, so a later stage (reward model, RL, evaluation) starts from the tuned model.
`load_model_sharded(section, mesh)` loads the same values straight into the mesh's shards,
reading only this process's slices (what training jobs use: a 7B/27B float32 copy does not
fit one TPU VM host).
The tokenizer comes from `tokenizer` (a SentencePiece .model path, or "tiny": the built-in
600-piece model of `alignment.tokenizer.tiny`, which the tiny presets use) when set, else from
the checkpoint itself (GGUF vocabulary, or tokenizer.model in the checkpoint dir), else None.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from alignment import lora as lora_lib
from alignment import sharding
from alignment.checkpoints import slices
from alignment.checkpoints.validate import check_finite
from alignment.model.config import ModelConfig, get_config
from alignment.model.transformer import init_params
from alignment.checkpoints.gguf_tokenizer import tokenizer_from_gguf
from alignment.tokenizer import Tokenizer
from alignment.tokenizer import tiny as tiny_tokenizer
from alignment.checkpoints.embedded import embedded_gguf_path, load_embedded
from alignment.checkpoints.gguf import load_gguf, load_gguf_sharded
from alignment.checkpoints.huggingface import load_safetensors, load_safetensors_sharded
from alignment.checkpoints.flax_gemma import load_flax_gemma, load_flax_gemma_sharded


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(dtype: Any) -> None:
  """Refuses a compute dtype that is not one of COMPUTE_DTYPES before anything loads (else a
  typo such as float17 surfaces as a JAX TypeError deep inside the first forward pass)."""
  if str(dtype) not in COMPUTE_DTYPES:
    raise ValueError(f"config model.dtype={dtype!r}: must be one of {', '.join(COMPUTE_DTYPES)}")


def require_tokenizer(tokenizer: Tokenizer | None, model_config: Any) -> Tokenizer:
  """The tokenizer, or an error naming config.model.tokenizer when the model section's
  checkpoint comes without one (the jobs that sample or read text need it)."""
  if tokenizer is None:
    raise ValueError(f"config.model: checkpoint {model_config.get('checkpoint')!r} comes "
                     "without a tokenizer; set config.model.tokenizer to a SentencePiece "
                     ".model file")
  return tokenizer


def _tokenizer(path: str) -> Tokenizer:
  if path == tiny_tokenizer.NAME:
    return tiny_tokenizer.tiny_tokenizer()
  return Tokenizer.from_model_file(path)


def load_model(model_config: Any) -> tuple[ModelConfig, Any, Tokenizer | None]:
  """Loads what a config's `model` section names (fields: checkpoint, preset, dtype, ...),
  every parameter a whole float32 array on the default device."""
  return _load(model_config, None)


def load_model_sharded(model_config: Any, mesh: Mesh
                       ) -> tuple[ModelConfig, Any, Tokenizer | None]:
  """`load_model` straight onto `mesh`: every parameter a global float32 array on
  `sharding.param_shardings(cfg, mesh)`, of which this process reads from disk and converts
  only the slices its own devices hold (`checkpoints.slices`); no whole float32 copy of the
  model exists on the host. Same values as `load_model`, bit for bit."""
  return _load(model_config, mesh)


def _load(model_config: Any, mesh: Mesh | None) -> tuple[ModelConfig, Any, Tokenizer | None]:
  checkpoint = str(model_config.get("checkpoint", "embedded"))
  preset = model_config.get("preset", "gemma3_270m")
  dtype = model_config.get("dtype", "float32")
  tokenizer_path = model_config.get("tokenizer", "")
  check_dtype(dtype)
  shardings_of = None if mesh is None else (lambda cfg: sharding.param_shardings(cfg, mesh))
  tokenizer = None
  if checkpoint == "embedded":
    if mesh is None:
      cfg, params, tokenizer = load_embedded("float32")
    else:
      path = embedded_gguf_path()
      cfg, params = load_gguf_sharded(path, shardings_of, expected="gemma3_270m")
      tokenizer = tokenizer_from_gguf(path)
  elif checkpoint == "random":
    cfg = get_config(preset)
    if tokenizer_path:  # a random model sized to the given tokenizer's vocabulary
      tokenizer = _tokenizer(tokenizer_path)
      cfg = cfg.replace(vocab_size=tokenizer.vocab_size)
    key = jax.random.key(int(model_config.get("seed", 0)))
    if mesh is None:
      params = init_params(cfg, key)
    else:  # initialised into its shards
      params = jax.jit(lambda: init_params(cfg, key), out_shardings=shardings_of(cfg))()
  else:
    path = pathlib.Path(checkpoint).expanduser()
    if not path.exists():
      raise FileNotFoundError(f"model checkpoint {path} does not exist (config model.checkpoint)")
    if path.suffix == ".gguf":
      cfg, params = (load_gguf(path, expected=None) if mesh is None
                     else load_gguf_sharded(path, shardings_of, expected=None))
      tokenizer = tokenizer_from_gguf(path)
    elif (path / "config.json").exists():
      cfg, params = (load_safetensors(path) if mesh is None
                     else load_safetensors_sharded(path, shardings_of))
    else:
      cfg, params = (load_flax_gemma(path) if mesh is None
                     else load_flax_gemma_sharded(path, shardings_of))
    if tokenizer is None and (path / "tokenizer.model").exists():
      tokenizer = Tokenizer.from_model_file(path / "tokenizer.model")
  if checkpoint != "random":  # random initialisation is finite by construction
    check_finite(params, f"model checkpoint {checkpoint} (config model.checkpoint)")
  if tokenizer_path and checkpoint != "random":  # overrides the checkpoint's own
    tokenizer = _tokenizer(tokenizer_path)
  if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} pieces but the "
                     f"model's vocabulary holds {cfg.vocab_size}")
  # Parameters stay float32 (master weights); `dtype` is the compute dtype of activations.
  cfg = cfg.replace(dtype=dtype, param_dtype="float32")
  if mesh is None:
    params = jax.tree.map(lambda x: x.astype("float32"), params)
  adapters_path = str(model_config.get("adapters", "") or "")
  if adapters_path:
    try:
      adapters, lcfg = lora_lib.load_adapters(adapters_path, cfg)
    except (FileNotFoundError, ValueError) as e:
      raise type(e)(f"config model.adapters: {e}") from None
    check_finite(adapters, f"adapters {adapters_path} (config model.adapters)")
    merge = lambda p, a: lora_lib.merge(p, a, lcfg)
    if mesh is None:
      params = jax.jit(merge)(params, adapters)
    else:  # merged in place, shard by shard; the adapters (small) go to every device
      on_mesh = sharding.replicated(mesh)
      adapters = jax.tree.map(lambda a: slices.place_leaf(
          slices.Leaf(a.shape, lambda box, a=np.asarray(a): a[box]), on_mesh), adapters)
      params = jax.jit(merge, out_shardings=shardings_of(cfg), donate_argnums=0)(
          params, adapters)
  return cfg, params, tokenizer
