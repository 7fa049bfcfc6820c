"""Time split of one PPO iteration on the embedded Gemma 3 270M: generate, score, train.

  python -m experiments.benchmarks.ppo_iteration [--prompts=8] [--new_tokens=32]
      [--warm_iterations=2] [--epochs=2] [--minibatches=2]

Builds the `ppo` job's trainer from configs/ppo.py:demo_270m (LoRA policy and critic on one
frozen base, toy token reward, Alpaca prompts) and runs one iteration to compile, then
`warm_iterations` timed ones. Each phase ends in a host read of its results, so the times
are wall-clock for finished work:
  generate  KV-cache sampling of `prompts` x `new_tokens` (stops at EOS/<end_of_turn>)
  score     policy + reference + critic pass over prompt+response, reward, advantages
  train     epochs x minibatches optimizer updates (forward + backward of policy and critic)
Rollout tokens/s counts generated tokens (rows stop early at a stop token); budget tokens/s
counts prompts x new_tokens, the work the decode loop is sized for.
"""

from __future__ import annotations

import logging
import time

import jax
import numpy as np
from absl import app
from absl import flags

from alignment import sharding
from alignment.jobs import ppo as ppo_job
from configs import ppo as ppo_config

_PROMPTS = flags.DEFINE_integer("prompts", 8, "Prompts per iteration (one sample each).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "Response token budget.")
_WARM = flags.DEFINE_integer("warm_iterations", 2, "Timed iterations after the first.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "PPO epochs per iteration.")
_MINIBATCHES = flags.DEFINE_integer("minibatches", 2, "Mini-batches per epoch.")


def main(_):
  logging.getLogger("absl").setLevel(logging.WARNING)
  config = ppo_config.get_config("demo_270m")
  config.rollout.update(prompts_per_iteration=_PROMPTS.value, max_new_tokens=_NEW_TOKENS.value)
  config.ppo.update(epochs=_EPOCHS.value, num_minibatches=_MINIBATCHES.value)
  config.train.iterations = 1 + _WARM.value
  mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1, 1))
  trainer, state, prompts, kl_ctl = ppo_job.build(config, mesh)
  rng = jax.random.key(0)
  rows = []
  for it in range(1 + _WARM.value):
    t0 = time.perf_counter()
    rollout = trainer.generate(state, next(prompts), jax.random.fold_in(rng, it))
    t1 = time.perf_counter()
    batch, metrics, _ = trainer.score(state, rollout, kl_ctl.value)
    t2 = time.perf_counter()
    state, _ = trainer.train(state, batch, jax.random.fold_in(rng, 1000 + it))
    t3 = time.perf_counter()
    tokens = int(rollout["batch"]["response_mask"].sum())
    rows.append((t1 - t0, t2 - t1, t3 - t2, tokens, rollout["batch"]["tokens"].shape))
    print(f"iteration {it + 1}{' (compiles)' if it == 0 else ''}: generate {t1 - t0:.2f} s, "
          f"score {t2 - t1:.2f} s, train {t3 - t2:.2f} s; {tokens} tokens generated, "
          f"reward {metrics['reward']:.3f}, kl {metrics['kl']:.3f}")
  warm = np.array([r[:4] for r in rows[1:]]) if len(rows) > 1 else np.array([rows[0][:4]])
  gen, score, train, tokens = warm.mean(axis=0)
  total = gen + score + train
  budget = _PROMPTS.value * _NEW_TOKENS.value
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"batch [B, P+R] = {list(rows[-1][4])}, {_EPOCHS.value} epochs x "
        f"{_MINIBATCHES.value} minibatches")
  print(f"warm iteration: {total:.2f} s = generate {gen:.2f} s ({100 * gen / total:.0f}%) + "
        f"score {score:.2f} s ({100 * score / total:.0f}%) + train {train:.2f} s "
        f"({100 * train / total:.0f}%)")
  print(f"rollout tokens/s: {tokens / gen:.1f} generated, {budget / gen:.1f} budget")


if __name__ == "__main__":
  app.run(main)
