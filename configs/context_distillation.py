"""Safety context distillation (Llama 2): answers generated with a safety preprompt become
fine-tuning targets for the same prompts without it; optionally targeted by a safety RM.

  python -m alignment.main --config=configs/context_distillation.py:demo_270m
  # targeted: first the safety reward model (python -m alignment.main
  # --config=configs/reward.py:safety writes runs/reward_safety/reward_model), then
  python -m alignment.main --config=configs/context_distillation.py \
      --config.distill.reward=runs/reward_safety/reward_model

Presets:
  default    embedded Gemma 3 270M, LoRA, 512 adversarial prompts (the paper's safety
             instructions and one-turn HH harmless requests), 128 new tokens, 200 steps.
  demo_270m  ~4 CPU-minutes on the 270M: 16 safety prompts, 32 new tokens, 8 steps,
             refusal rate on 8 held-out prompts before and after.
  tiny       random tiny model (tests).
distill.reward: '' (plain distillation), a saved safety reward-model directory or a named
reward (refusal | compliance | length): targeted distillation keeps only the answers that
score higher with the preprompt than without.
"""

from __future__ import annotations

import ml_collections

from alignment.jobs import sections
from alignment.rl.context_distillation import DEFAULT_PREPROMPT


def get_config(preset: str | None = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "context_distillation"
  c.workdir = "runs/context_distillation"
  c.data_dir = ""  # '' -> $ALIGNMENT_DATA_DIR
  c.seed = 0
  c.resume = sections.RESUME  # 'same_run' | 'continue_with_changes' (sections.RESUME)
  c.model = sections.model()
  c.lora = sections.lora(rank=8, alpha=16.0)
  c.lora.unmerged = True  # adapters beside the frozen weights, as in configs/sft.py
  c.distill = ml_collections.ConfigDict(dict(
      preprompt=DEFAULT_PREPROMPT, reward="", reward_batch_size=8))
  c.sampling = sections.sampling(temperature=0.7)
  c.data = sections.prompt_data(("safety_instructions", "hh_harmless"))
  c.train = sections.train(steps=200, batch_size=16, learning_rate=1e-4, warmup_steps=10)
  c.eval = ml_collections.ConfigDict(dict(num_prompts=64))  # held out; 0 = no refusal eval
  c.checkpoint = sections.checkpoint(every=100, keep=1)
  c.mesh = sections.mesh()
  c.distributed = sections.distributed()

  if preset in (None, "default"):
    pass
  elif preset == "demo_270m":
    c.workdir = "runs/context_distillation_demo"
    c.sampling.update(max_new_tokens=32, batch_size=16)
    c.data.update(prompt_source=("safety_instructions",), num_prompts=16, max_length=192)
    c.train.update(steps=8, batch_size=4, learning_rate=1e-3, warmup_steps=1, log_every=2)
    c.eval.num_prompts = 8
    c.checkpoint.every = 8
  elif preset == "tiny":
    c.workdir = "runs/context_distillation_tiny"
    c.model = sections.model(checkpoint="random", preset="tiny_gemma1")
    c.model.tokenizer = "tiny"  # the built-in 600-piece SentencePiece model
    c.distill.preprompt = "Be safe."
    c.sampling.update(temperature=1.0, max_new_tokens=8, batch_size=8)
    c.data.update(prompt_source=("safety_instructions",), num_prompts=8, max_length=128,
                  packing=False)
    c.train.update(steps=2, batch_size=4, learning_rate=3e-3, warmup_steps=1, log_every=1,
                   progress_bar=False)
    c.eval.num_prompts = 0
    c.checkpoint.every = 2
  else:
    raise ValueError(f"unknown context_distillation preset {preset!r}; known: default, "
                     "demo_270m, tiny")
  return c
