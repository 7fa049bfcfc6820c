"""Reward models (Llama 2 style): a safety RM on HH harmless, a helpfulness RM on HH helpful.

  python -m alignment.main --config=configs/reward.py:safety
  python -m alignment.main --config=configs/reward.py:helpfulness --config.train.steps=200

Presets:
  safety       CPU-sized: embedded Gemma 3 270M, LoRA on the top layers, HH harmless pairs cut
               to 128 tokens (prompt end kept), a few minutes on 2 cores.
  helpfulness  the same on HH helpful.
  safety_full  accelerators: full fine-tuning, every HH harmless training pair, 512 tokens.
  tiny         random tiny model on synthetic pairs (tests).
Only HH test splits are available: `data.validation_fraction` of them (by conversation,
seed `seed`) is held out for validation. Results: <workdir>/eval.json, calibration.png,
summary.json, reward_model/ (what the harmfulness scorer loads).
"""

from __future__ import annotations

import ml_collections

from alignment.jobs import sections


def get_config(preset: str | None = "safety") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "reward"
  c.workdir = "runs/reward_safety"
  c.data_dir = ""  # '' -> $ALIGNMENT_DATA_DIR
  c.seed = 0
  c.resume = sections.RESUME  # 'same_run' | 'continue_with_changes' (sections.RESUME)
  c.model = sections.model()
  c.lora = sections.lora(rank=8, alpha=16.0)
  c.lora.last_layers = 2  # adapters on the top N layers only (0 = all); see reward/model.py
  c.data = ml_collections.ConfigDict(dict(
      # Preference sources: 'hh_harmless' | 'hh_helpful' | 'synthetic' (tests) | files; a
      # tuple of names (`a,b` on a command line).
      source=("hh_harmless",),
      # A file holds prompt/chosen/rejected[/margin] rows (alignment/data/user_files.py);
      # `columns` renames its columns first ("question:prompt,good:chosen,bad:rejected").
      columns="",
      # '' = each prompt as stored (HH transcripts are already "Human:/Assistant:" turns); or
      # a template name (alpaca, gemma_chat) wrapping each prompt, as SFT's data.template.
      template="",
      validation_fraction=0.2, max_length=128,
      max_pairs=0, max_validation_pairs=0,  # 0 = all
      synthetic_pairs=0))  # pairs generated for source=('synthetic',)
  c.train = sections.train(steps=1000, batch_size=16, learning_rate=1e-4, warmup_steps=20)
  c.train.eval_batch_size = 16
  c.loss = ml_collections.ConfigDict(dict(
      margin_scale=1.0,  # x each pair's preference strength (Llama 2 margin); HH has none
      centering=0.0))  # coefficient of (r_c + r_r)^2 (Eisenstein et al. 2023); 0 = off
  c.checkpoint = sections.checkpoint(every=200, keep=2)
  c.mesh = sections.mesh()
  c.distributed = sections.distributed()

  if preset in (None, "safety", "helpfulness"):
    if preset == "helpfulness":
      c.workdir = "runs/reward_helpfulness"
      c.data.source = ("hh_helpful",)
    c.data.update(max_pairs=512, max_validation_pairs=256)
    c.train.update(steps=64, batch_size=8, learning_rate=2e-3, warmup_steps=4, log_every=8)
    c.checkpoint.every = 32
  elif preset == "safety_full":
    c.workdir = "runs/reward_safety_full"
    c.model.dtype = "bfloat16"
    c.lora.enabled = False
    c.data.max_length = 512
    c.train.update(steps=600, batch_size=32, learning_rate=1e-5, warmup_steps=30)
    c.loss.centering = 0.01
  elif preset == "tiny":
    c.workdir = "runs/reward_tiny"
    c.model = sections.model(checkpoint="random", preset="tiny_gemma1")
    c.lora.enabled = False
    c.data.update(source=("synthetic",), synthetic_pairs=320, max_length=24,
                  validation_fraction=0.25)
    c.train.update(steps=30, batch_size=16, learning_rate=3e-3, warmup_steps=3,
                   log_every=10, progress_bar=False)
    c.checkpoint.every = 15
  else:
    raise ValueError(f"unknown reward preset {preset!r}; known: 'safety', 'helpfulness', "
                     "'safety_full', 'tiny'")
  return c
