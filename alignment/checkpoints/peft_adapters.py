"""LoRA adapters in the PEFT format (adapter_config.json + adapter_model.safetensors).

The format `peft.PeftModel.from_pretrained(base, folder)` reads, so adapters trained here can
be served on top of the Hugging Face base model (transformers + peft, vLLM's LoRA support)
without merging them.

Layout facts. Ours (`alignment.lora.adapters`): A maps the projection's input axes to the
rank, B the rank to its output axes, and the update is `alpha / rank * A @ B` in our einsum
layout (q: A [D, r], B [r, N, H]; o: A [N, H, r], B [r, D]; ...). PEFT's: `lora_A.weight`
[r, in_features] and `lora_B.weight` [out_features, r] of a torch `Linear` whose weight is
[out, in], update `lora_alpha / r * lora_B @ lora_A`. Flattening A's input axes and B's
output axes in the order `huggingface._to_hf` flattens the base weights (q_proj rows are
(head, head_dim), o_proj columns likewise) makes `lora_A = A.T`, `lora_B = B.T` and keeps
the scale, so the same `alpha` and `rank` go into adapter_config.json.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from alignment.files import atomic
from alignment.lora.adapters import TARGETS, LoraConfig
from alignment.model.config import ModelConfig

Params = Any
PathLike = str | os.PathLike

# Our target name -> the HF module it adapts (under model.layers.<i>.).
HF_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}
_PREFIX = "base_model.model.model.layers."  # PeftModel -> LoraModel -> *ForCausalLM -> decoder


def _layer_index(name: str) -> int:
  if not name.startswith("layer_") or not name[len("layer_"):].isdigit():
    raise ValueError(f"adapters: unexpected layer name {name!r} (expected layer_<i>)")
  return int(name[len("layer_"):])


def to_peft_tensors(cfg: ModelConfig, adapters: Params) -> dict[str, np.ndarray]:
  """Our adapter tree -> PEFT's tensor names and [r, in] / [out, r] layouts."""
  tensors = {}
  for layer_name, layer in adapters.items():
    i = _layer_index(layer_name)
    if i >= cfg.num_layers:
      raise ValueError(f"adapters {layer_name}: the model has {cfg.num_layers} layers")
    for name, ab in layer.items():
      if name not in TARGETS:
        raise ValueError(f"adapters {layer_name}/{name}: unknown LoRA target; known: "
                         f"{sorted(TARGETS)}")
      a, b = np.asarray(jax.device_get(ab["a"])), np.asarray(jax.device_get(ab["b"]))
      rank = a.shape[-1]
      key = f"{_PREFIX}{i}.{HF_MODULES[name]}"
      tensors[key + ".lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
      tensors[key + ".lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
  return tensors


def peft_config(cfg: ModelConfig, adapters: Params, lora: LoraConfig,
                base_model_name_or_path: str) -> dict[str, Any]:
  """adapter_config.json: r, lora_alpha, target_modules and, for adapters on some layers
  only (`lora.last_layers`), layers_to_transform."""
  layers = sorted(_layer_index(name) for name in adapters)
  targets = {name: sorted(layer) for name, layer in adapters.items()}
  if len({tuple(t) for t in targets.values()}) > 1:
    raise ValueError(f"adapters target different projections on different layers ({targets}); "
                     "PEFT's target_modules is one list for all layers")
  names = next(iter(targets.values()), list(lora.targets))
  partial = layers != list(range(cfg.num_layers))
  return {
      "peft_type": "LORA",
      "task_type": "CAUSAL_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "r": lora.rank,
      "lora_alpha": lora.alpha,
      "lora_dropout": lora.dropout,
      "target_modules": sorted(HF_MODULES[n].split(".")[-1] for n in names),
      "layers_to_transform": layers if partial else None,
      "layers_pattern": "layers" if partial else None,
      "bias": "none",
      "fan_in_fan_out": False,
      "use_rslora": False,
      "use_dora": False,
      "init_lora_weights": True,
      "modules_to_save": None,
      "rank_pattern": {},
      "alpha_pattern": {},
      "inference_mode": True,
  }


def save_peft_adapters(cfg: ModelConfig, adapters: Params, lora: LoraConfig,
                       out_dir: PathLike, base_model_name_or_path: str,
                       dtype: str = "float32") -> pathlib.Path:
  """Writes `adapters` as a PEFT adapter folder, atomically (a temporary directory renamed
  into place; an existing `out_dir` is replaced)."""
  for layer_name, layer in adapters.items():
    for name, ab in layer.items():
      rank = np.shape(ab["a"])[-1]
      if rank != lora.rank:
        raise ValueError(f"adapters {layer_name}/{name}: rank {rank} but the LoRA config "
                         f"says {lora.rank}")
  tensors = {k: v.astype(jnp.dtype(dtype)) for k, v in to_peft_tensors(cfg, adapters).items()}
  config = peft_config(cfg, adapters, lora, base_model_name_or_path)
  with atomic.writing_directory(out_dir) as tmp:
    save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
  return pathlib.Path(out_dir).absolute()
