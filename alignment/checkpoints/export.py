"""A training run directory -> folders other tools load: Hugging Face model(s) and PEFT adapters.

Every trainer (sft, dpo, rejection_sampling, context_distillation, ppo) leaves config.json
(whose `model` section names the weights it started from) and, with LoRA, adapters.npz
(which carries its own LoRA config). From those, `export_run` writes under `out_dir`:

    merged/   the tuned model: transformers config.json, model.safetensors,
              generation_config.json and the tokenizer files (AutoModelForCausalLM /
              AutoTokenizer.from_pretrained load it; so do vLLM and llama.cpp's converter)
    base/     LoRA runs: the model the adapters apply to, in the same format (the run's
              start: its checkpoint with any `model.adapters` start merged in)
    peft/     LoRA runs: adapter_config.json + adapter_model.safetensors, for
              `peft.PeftModel.from_pretrained(base, "peft/")`

A full fine-tuning run keeps its weights in merged_hf/ (sft's `export_merged=True`); it is
re-exported to merged/ with the tokenizer. Reward-model runs are not causal LMs and are
refused (their reward_model/ folder is what `alignment.reward.scorer` loads).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

import jax

from alignment import lora as lora_lib
from alignment.checkpoints import huggingface, peft_adapters
from alignment.checkpoints.loading import load_model

PathLike = str | os.PathLike
log = logging.getLogger(__name__)

ADAPTERS = "adapters.npz"
FULL_FINE_TUNING = "merged_hf"  # where sft's export_merged writes a full fine-tuning run


def read_run_config(run_dir: PathLike) -> dict[str, Any]:
  """A run directory's config.json, checked for what an export needs (a `model` section)."""
  run_dir = pathlib.Path(run_dir)
  if not run_dir.is_dir():
    raise FileNotFoundError(f"run directory {run_dir} does not exist")
  path = run_dir / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: {run_dir} is not a training run directory "
                            "(every trainer writes its config.json there when it starts)")
  try:
    config = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
    raise ValueError(f"{path}: no 'model' section (which weights the run started from)")
  if config.get("job") == "reward":
    raise ValueError(f"{path}: a reward-model run (job 'reward') scores text and is not a "
                     f"causal language model; load its {run_dir / 'reward_model'} with "
                     "alignment.reward.scorer instead")
  return config


def _base_reference(model: dict[str, Any], path: str) -> str:
  """What adapter_config.json names as the base when base/ is not written: the run's own
  HF checkpoint folder, which only works when the run started from one unmodified."""
  checkpoint = pathlib.Path(str(model.get("checkpoint", "")))
  if model.get("adapters") or not (checkpoint / "config.json").is_file():
    raise ValueError(f"{path}: the run's base (model.checkpoint={model.get('checkpoint')!r}, "
                     f"model.adapters={model.get('adapters', '')!r}) is not a Hugging Face "
                     "folder that PEFT could load the adapters onto; export with write_base "
                     "on")
  return str(checkpoint.absolute())


def export_run(run_dir: PathLike, out_dir: PathLike, dtype: str = "float32",
               family: str | None = None, write_base: bool = True) -> dict[str, str]:
  """Writes merged/ (and for LoRA runs base/ and peft/) under `out_dir`; returns their paths.

  `dtype` is the tensors' dtype on disk; `family` the transformers class (default: the one
  the model config needs, `huggingface.infer_family`).
  """
  run_dir, out_dir = pathlib.Path(run_dir), pathlib.Path(out_dir)
  run_config = read_run_config(run_dir)
  model = dict(run_config["model"])
  adapters_path = run_dir / ADAPTERS
  lora_enabled = (run_config.get("lora") or {}).get("enabled", True)
  written: dict[str, str] = {}

  if not adapters_path.is_file():
    merged_dir = run_dir / FULL_FINE_TUNING
    if lora_enabled or not (merged_dir / "config.json").is_file():
      what = (f"{adapters_path} not found: the run has not finished (LoRA runs write it at "
              "the end)" if lora_enabled else
              f"{adapters_path} not found and {merged_dir / 'config.json'} neither: a full "
              "fine-tuning run is exported from merged_hf/ (sft with export_merged=True)")
      raise FileNotFoundError(what)
    cfg, params, tokenizer = load_model({**model, "checkpoint": str(merged_dir),
                                         "adapters": ""})
    if tokenizer is None:  # merged_hf/ written without one: the run's own tokenizer
      tokenizer = load_model({**model, "adapters": ""})[2]
    written["merged"] = str(huggingface.save_safetensors(
        cfg, params, out_dir / "merged", family, dtype, tokenizer))
    return written

  # Checked before anything is written.
  base_name = (str((out_dir / "base").absolute()) if write_base
               else _base_reference(model, str(run_dir / "config.json")))
  cfg, base, tokenizer = load_model(model)
  if tokenizer is None:
    log.warning("%s: the run's model has no tokenizer (model.tokenizer is empty); the "
                "export holds no tokenizer files", run_dir / "config.json")
  adapters, lcfg = lora_lib.load_adapters(adapters_path, cfg)
  merged = jax.jit(lambda p, a: lora_lib.merge(p, a, lcfg))(base, adapters)
  written["merged"] = str(huggingface.save_safetensors(
      cfg, jax.device_get(merged), out_dir / "merged", family, dtype, tokenizer))
  if write_base:
    written["base"] = str(huggingface.save_safetensors(
        cfg, jax.device_get(base), out_dir / "base", family, dtype, tokenizer))
  written["peft"] = str(peft_adapters.save_peft_adapters(
      cfg, jax.device_get(adapters), lcfg, out_dir / "peft", base_name, dtype))
  return written
