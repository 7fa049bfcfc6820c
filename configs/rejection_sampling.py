"""Rejection-sampling fine-tuning (Llama 2): best of K samples per prompt by reward, then SFT.

  python -m alignment.main --config=configs/rejection_sampling.py:demo_270m
  # default: first the reward model it reads (runs/reward_helpfulness/reward_model):
  python -m alignment.main --config=configs/reward.py:helpfulness
  python -m alignment.main --config=configs/rejection_sampling.py

Presets:
  default    embedded Gemma 3 270M, LoRA, 512 Alpaca + safety prompts, K=4, 3 rounds, scored
             by a saved reward model (rs.reward = its directory; the `reward` job writes it).
  demo_270m  ~5 CPU-minutes on the 270M: 8 safety prompts, K=4, 32 new tokens, 2 rounds of
             4 steps, the string-match 'refusal' reward (refusals win).
  tiny       random tiny model, the 'length' reward (tests).
rs.reward: 'combined' (two RMs, Llama 2's rule), a reward-model directory or a named reward:
length | refusal | compliance.
train.steps is per round.
"""

from __future__ import annotations

import ml_collections

from alignment import schema
from alignment.jobs import sections
from alignment.rl.rejection_sampling import RoundsConfig


def get_config(preset: str | None = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "rejection_sampling"
  c.workdir = "runs/rejection_sampling"
  c.data_dir = ""  # '' -> $ALIGNMENT_DATA_DIR
  c.seed = 0
  c.resume = sections.RESUME  # 'same_run' | 'continue_with_changes' (sections.RESUME)
  c.model = sections.model()
  c.lora = sections.lora(rank=8, alpha=16.0)
  c.lora.unmerged = True  # adapters beside the frozen weights, as in configs/sft.py
  # rs.reward='combined': Llama 2's rule over two saved RMs; prompts from unsafe_sources (or
  # with a safety sigmoid below the threshold) are judged by the safety RM. With
  # use_min_reward, prompts whose best reward is below min_reward are dropped.
  c.rs = schema.section(
      RoundsConfig, rounds=3, num_samples=4,  # N rounds, K samples per prompt
      reward="runs/reward_helpfulness/reward_model",
      safety_rm="runs/reward_safety/reward_model",
      helpfulness_rm="runs/reward_helpfulness/reward_model",
      unsafe_sources=("safety_instructions",))
  c.sampling = sections.sampling(temperature=1.0)
  c.data = sections.prompt_data(("alpaca", "safety_instructions"))
  c.train = sections.train(steps=100, batch_size=16, learning_rate=1e-4, warmup_steps=10)
  c.checkpoint = sections.checkpoint(every=100, keep=1)
  c.mesh = sections.mesh()
  c.distributed = sections.distributed()

  if preset in (None, "default"):
    pass
  elif preset == "demo_270m":
    c.workdir = "runs/rejection_sampling_demo"
    c.rs.update(rounds=2, reward="refusal")
    c.sampling.update(max_new_tokens=32, batch_size=16)
    c.data.update(prompt_source=("safety_instructions",), num_prompts=8, max_length=128)
    c.train.update(steps=4, batch_size=4, learning_rate=1e-3, warmup_steps=1, log_every=2)
    c.checkpoint.every = 4
  elif preset == "tiny":
    c.workdir = "runs/rejection_sampling_tiny"
    c.model = sections.model(checkpoint="random", preset="tiny_gemma1")
    c.model.tokenizer = "tiny"  # the built-in 600-piece SentencePiece model
    c.rs.update(rounds=2, num_samples=3, reward="length")
    c.sampling.update(temperature=1.0, max_new_tokens=8, batch_size=24)  # one call per round
    c.data.update(prompt_source=("safety_instructions",), num_prompts=8, max_length=128,
                  packing=False)
    c.train.update(steps=2, batch_size=4, learning_rate=3e-3, warmup_steps=1, log_every=1,
                   progress_bar=False)
    c.checkpoint.every = 2
  else:
    raise ValueError(f"unknown rejection_sampling preset {preset!r}; known: default, "
                     "demo_270m, tiny")
  return c
