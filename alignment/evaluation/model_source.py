"""Which model an evaluation answers with: a model section plus adapters, or a training run's
directory (its config.json's model and its adapters.npz or merged_hf/), loaded with the
adapters merged.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax

from alignment import lora as lora_lib
from alignment.checkpoints.loading import load_model, require_tokenizer
from alignment.quantization import quantize_params


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """What to load: a model section and an optional adapters file (resolved from run_dir)."""

  model: dict[str, Any]
  adapters: str
  run_config: dict[str, Any] | None  # the SFT run's config.json, when run_dir is set
  run_dir: str = ""

  def describe(self, quantize: str = "") -> str:
    """The run directory (or checkpoint), the adapters and the quantization, for titles."""
    return (f"{self.run_dir or self.model.get('checkpoint')}"
            + (f" + {self.adapters}" if self.adapters else "")
            + (f" ({quantize})" if quantize else ""))


def resolve_model(model: Mapping[str, Any], adapters: str = "", run_dir: str = ""
                  ) -> ModelSource:
  """The model section and adapters path a config names, reading `run_dir` if set.

  With `run_dir`, the model section is the run's own (its config.json) and the adapters are
  its adapters.npz, unless `config.adapters` names another file. A full fine-tuning run (no
  adapters) is evaluated from its merged_hf export.
  """
  model = dict(model)
  if not run_dir:
    return ModelSource(model, adapters, None)
  run_dir = pathlib.Path(run_dir)
  config_path = run_dir / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"config.run_dir: {config_path} not found (not a training run "
                            "directory)")
  try:
    run_config = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path}: not valid JSON ({e})") from None
  if not isinstance(run_config.get("model"), dict):
    raise ValueError(f"{config_path}: no 'model' section")
  model = dict(run_config["model"])
  if not adapters:
    if (run_dir / "adapters.npz").is_file():
      adapters = str(run_dir / "adapters.npz")
    elif (run_dir / "merged_hf" / "config.json").is_file():
      model["checkpoint"] = str(run_dir / "merged_hf")
    else:
      raise FileNotFoundError(f"config.run_dir: {run_dir} has neither adapters.npz (LoRA run) "
                              "nor merged_hf/ (full fine-tuning with export_merged=True); has "
                              "the run finished?")
  return ModelSource(model, adapters, run_config, str(run_dir))


def template_name(configured: str, source: ModelSource) -> str:
  """`configured`, or if empty: the SFT run's data.template, else 'alpaca' (the paper's)."""
  if configured:
    return configured
  run_template = ((source.run_config or {}).get("data") or {}).get("template")
  return run_template or "alpaca"


def check_adapters(source: ModelSource) -> None:
  """A FileNotFoundError, before the slow model load, for an adapters path with no file."""
  if source.adapters and not pathlib.Path(source.adapters).is_file():
    raise FileNotFoundError(f"config.adapters: no LoRA adapter file at {source.adapters}")


def load_params(source: ModelSource, quantize: str = ""):
  """(ModelConfig, decoder params with adapters merged, tokenizer); `quantize` ('int8' |
  'int4') round-trips the merged weights through that format (a quantized deployment)."""
  cfg, params, tokenizer = load_model(source.model)
  require_tokenizer(tokenizer, source.model)
  if source.adapters:
    try:
      adapters, lcfg = lora_lib.load_adapters(source.adapters, cfg)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"config.adapters: {e}") from None
    params = jax.jit(lambda p, a: lora_lib.merge(p, a, lcfg))(params, adapters)
  return cfg, quantize_params(params, quantize) if quantize else params, tokenizer
