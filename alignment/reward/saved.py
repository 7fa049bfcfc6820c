"""A trained reward model on disk, in a form evaluation can load without the training run.

    <dir>/reward_model.json   what to load: the base model section, LoRA or full, max_length,
                              the prompt format the model was trained on, validation figures
    <dir>/head.npz            the scalar head (w [D], b [])
    <dir>/adapters.npz        LoRA adapters (`alignment.lora.save_adapters`), with LoRA
    <dir>/backbone/           full fine-tuning: the decoder as HF safetensors (+ config.json)
    <dir>/tokenizer.model     the tokenizer it was trained with, when there was one

With LoRA only the small files are written; the base weights are re-read from the model
section (e.g. the embedded checkpoint), exactly as training read them.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignment import lora as lora_lib
from alignment.checkpoints.loading import load_model, load_model_sharded
from alignment.model.config import ModelConfig
from alignment.reward import model as reward_model
from alignment.tokenizer import Tokenizer
from alignment.files import atomic
from alignment.checkpoints.huggingface import save_safetensors

META = "reward_model.json"
FORMAT_VERSION = 1


@dataclasses.dataclass
class RewardModel:
  """A loaded reward model: run `scalar_head_params` through `sequence_rewards`."""

  config: ModelConfig
  head_params: Any  # {"backbone", "w", "b"}: LoRA already merged
  tokenizer: Tokenizer | None
  meta: dict[str, Any]

  @property
  def max_length(self) -> int:
    return int(self.meta["max_length"])


def save_reward_model(directory: str | pathlib.Path, config: ModelConfig, params: Any,
                      lora: lora_lib.LoraConfig | None, tokenizer: Tokenizer | None,
                      model_section: dict[str, Any], meta: dict[str, Any]) -> pathlib.Path:
  """Writes {"base", "lora", "head"} params (host copies) and metadata into `directory`."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  params = jax.device_get(params)
  with atomic.writing(directory / "head.npz", "wb") as f:
    np.savez(f, w=np.asarray(params["head"]["w"]), b=np.asarray(params["head"]["b"]))
  if lora is not None:
    lora_lib.save_adapters(directory / "adapters.npz", params["lora"], lora)
  else:
    save_safetensors(config.replace(dtype="float32"), params["base"], directory / "backbone")
  if tokenizer is not None:
    (directory / "tokenizer.model").write_bytes(tokenizer.serialized_proto())
  full = {"format_version": FORMAT_VERSION, "model": dict(model_section),
          "lora": lora is not None, **meta}
  atomic.write_json(directory / META, full)
  return directory


def load_reward_model(directory: str | pathlib.Path, mesh: jax.sharding.Mesh | None = None
                      ) -> RewardModel:
  """Loads what `save_reward_model` wrote; errors name the missing or mismatched file. With
  `mesh`, the backbone is loaded straight into its shards (`load_model_sharded`)."""
  directory = pathlib.Path(directory)
  meta_path = directory / META
  if not meta_path.is_file():
    raise FileNotFoundError(f"{meta_path} not found: not a saved reward model directory "
                            "(the reward job writes it to <workdir>/reward_model)")
  meta = json.loads(meta_path.read_text())
  for field in ("model", "lora", "max_length"):
    if field not in meta:
      raise ValueError(f"{meta_path}: missing field {field!r}")
  section = dict(meta["model"])
  if (directory / "tokenizer.model").is_file():
    section["tokenizer"] = str(directory / "tokenizer.model")
  if not meta["lora"]:
    section["checkpoint"] = str(directory / "backbone")
  cfg, base, tokenizer = (load_model(section) if mesh is None
                          else load_model_sharded(section, mesh))
  with np.load(directory / "head.npz") as head_file:
    head = {"w": jnp.asarray(head_file["w"]), "b": jnp.asarray(head_file["b"])}
  if head["w"].shape != (cfg.embed_dim,):
    raise ValueError(f"{directory / 'head.npz'}: head w has shape {head['w'].shape}, the "
                     f"model's embed_dim is {cfg.embed_dim}")
  lcfg, adapters = None, {}
  if meta["lora"]:
    adapters, lcfg = lora_lib.load_adapters(directory / "adapters.npz")
    expected = jax.eval_shape(lambda: lora_lib.init_adapters(cfg, lcfg, jax.random.key(0)))
    for layer, targets in adapters.items():
      for name, ab in targets.items():
        for part, value in ab.items():
          want = expected.get(layer, {}).get(name, {}).get(part)
          if want is None or want.shape != value.shape:
            raise ValueError(f"{directory / 'adapters.npz'}: adapter {layer}/{name}/{part} "
                             f"has shape {value.shape}, expected "
                             f"{None if want is None else want.shape}")
  params = {"base": base, "lora": adapters, "head": head}
  head_params = jax.jit(lambda p: reward_model.scalar_head_params(p, lcfg))(params)
  return RewardModel(cfg, head_params, tokenizer, meta)
