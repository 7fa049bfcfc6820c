"""RLHF with PPO: policy, critic, frozen reference and a reward.

  python -m alignment.main --config=configs/ppo.py:demo_270m   # needs nothing else
  # default: first the two reward models it reads (runs/reward_{safety,helpfulness}/):
  python -m alignment.main --config=configs/reward.py:safety
  python -m alignment.main --config=configs/reward.py:helpfulness
  python -m alignment.main --config=configs/ppo.py

Presets:
  default    embedded Gemma 3 270M (optionally an SFT run's adapters merged in via
             model.adapters), LoRA policy and critic on one frozen base, Alpaca + HH harmless
             prompts, Llama 2's combined safety/helpfulness reward from two saved RMs.
  demo_270m  ~6 CPU-minutes on the 270M: a toy reward (fraction of "." tokens),
             8 prompts x 16 tokens per iteration, 8 iterations (see docs/MEASUREMENTS.md).
  tiny       random tiny model, toy reward (tests).
"""

from __future__ import annotations

import ml_collections

from alignment import schema
from alignment.jobs import sections
from alignment.rl.rewards import RewardSpec


def get_config(preset: str | None = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "ppo"
  c.workdir = "runs/ppo"
  c.data_dir = ""  # '' -> $ALIGNMENT_DATA_DIR
  c.seed = 0
  c.resume = sections.RESUME  # 'same_run' | 'continue_with_changes' (sections.RESUME)
  c.model = sections.model()
  c.lora = sections.lora(rank=8, alpha=16.0)  # policy and critic adapters
  c.prompts = ml_collections.ConfigDict(dict(
      sources=("alpaca", "hh_harmless"),  # data sources (`a,b` on a command line)
      per_source=2000,  # seeded random subset of each (0 = all)
      template="alpaca"))
  c.rollout = ml_collections.ConfigDict(dict(
      prompts_per_iteration=16, samples_per_prompt=1, max_new_tokens=64,
      max_prompt_length=128,  # longer prompts are dropped
      # temperature 1 with no filters samples the policy itself (on-policy); anything else
      # makes rollouts off-policy with respect to the log-probs PPO optimises.
      temperature=1.0, top_k=0, top_p=1.0))
  # kind: 'combined' (Llama 2's rule over safety_dir and helpfulness_dir, unsafe_sources and
  # safety_threshold) | 'reward_model' (model_dir) | 'token_fraction' (token: a vocabulary
  # piece or an id, or several, spaced).
  c.reward = schema.section(RewardSpec, kind="combined",
                            safety_dir="runs/reward_safety/reward_model",
                            helpfulness_dir="runs/reward_helpfulness/reward_model")
  c.ppo = ml_collections.ConfigDict(dict(
      epochs=2, num_minibatches=2, clip_ratio=0.2, clip_value=0.2, vf_coef=0.1,
      entropy_coef=0.0, gamma=1.0, lam=0.95,
      estimator="gae",  # 'gae' | 'reinforce' | 'grpo' (needs samples_per_prompt >= 2)
      whiten_rewards=True, whiten_advantages=True))
  c.kl = ml_collections.ConfigDict(dict(
      controller="adaptive",  # 'adaptive' (Ziegler et al. 2019) | 'fixed'
      coef=0.05, target=6.0, horizon=10_000))
  c.train = ml_collections.ConfigDict(dict(
      iterations=200, learning_rate=1e-4, schedule="constant", warmup_steps=0,
      weight_decay=0.0, max_grad_norm=1.0, log_every=5, progress_bar=True))
  c.checkpoint = sections.checkpoint(every=20, keep=2)
  c.mesh = sections.mesh()
  c.distributed = sections.distributed()

  if preset in (None, "default"):
    pass
  elif preset == "demo_270m":
    c.workdir = "runs/ppo_demo"
    c.lora.rank = 4
    c.prompts.update(sources=("alpaca",), per_source=128)
    # Prompts up to 48 tokens all pad to one length bucket: one compilation, not one per bucket.
    c.rollout.update(prompts_per_iteration=8, max_new_tokens=16, max_prompt_length=48)
    c.reward.update(kind="token_fraction", token=".")
    c.ppo.update(epochs=2, num_minibatches=2, whiten_rewards=False)
    # lr 2e-3 drifted 39 nats in 5 iterations; 5e-4 gave approx_kl 1.4 in the first update.
    c.kl.update(controller="fixed", coef=0.1)
    c.train.update(iterations=8, learning_rate=2e-4, log_every=1)
    c.checkpoint.every = 4
  elif preset == "tiny":
    c.workdir = "runs/tiny_ppo"
    c.model = sections.model(checkpoint="random", preset="tiny_gemma3")
    c.model.tokenizer = "tiny"  # the built-in 600-piece SentencePiece model
    c.lora.rank = 4
    c.prompts.update(sources=("seed_tasks",), per_source=64)
    c.rollout.update(prompts_per_iteration=8, samples_per_prompt=2, max_new_tokens=8,
                     max_prompt_length=96)
    # Eight single-letter pieces: a random model samples one about every 75 tokens, so the
    # reward has hits from the first iteration.
    c.reward.update(kind="token_fraction", token="e t a o i n s r")
    c.ppo.update(epochs=2, num_minibatches=2, whiten_rewards=False)
    c.kl.update(controller="adaptive", coef=0.02, target=1.0, horizon=200)
    c.train.update(iterations=4, learning_rate=5e-3, log_every=1, progress_bar=False)
    c.checkpoint.every = 2
  else:
    raise ValueError(f"unknown ppo preset {preset!r}; known: default, demo_270m, tiny")
  return c
