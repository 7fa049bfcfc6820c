"""Export a training run to Hugging Face folders: the merged model and, for LoRA, PEFT adapters.

  python -m alignment.main --config=configs/export.py --config.run_dir=runs/sft
  python -m alignment.main --config=configs/export.py --config.run_dir=runs/dpo \
      --config.out_dir=exports/dpo --config.dtype=bfloat16

Works on the run directory of sft, dpo, rejection_sampling, context_distillation and ppo
(config.json + adapters.npz; a full fine-tuning sft run from its merged_hf/). Writes
out_dir/merged (transformers' AutoModelForCausalLM and AutoTokenizer load it), and for LoRA
runs out_dir/base (what the adapters apply to) and out_dir/peft (peft.PeftModel loads it on
top of base/), then out_dir/export.json. See alignment/checkpoints/export.py.
"""

from __future__ import annotations

import ml_collections


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  if preset is not None:
    raise ValueError(f"unknown export preset {preset!r}; export has no presets")
  c = ml_collections.ConfigDict()
  c.job = "export"
  c.run_dir = ""  # a training run's workdir (required)
  c.out_dir = ""  # '' -> <run_dir>/export
  c.dtype = "float32"  # tensors on disk: 'float32' | 'bfloat16' | 'float16'
  c.family = ""  # transformers class: '' (the one the model needs) | gemma | gemma2 | gemma3
  # LoRA runs: also write base/ for PEFT. Off: adapter_config.json names the run's own HF
  # checkpoint folder instead (only possible when the run started from one, unmodified).
  c.write_base = True
  return c
