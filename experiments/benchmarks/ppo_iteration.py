"""Time split of one PPO iteration on the embedded Gemma 3 270M: generate, score, train.

  python -m experiments.benchmarks.ppo_iteration [--prompts=8] [--new_tokens=32]
      [--warm_iterations=2] [--epochs=2] [--minibatches=2]

Runs the `ppo` job (`python -m alignment.main --config=configs/ppo.py:demo_270m`: LoRA policy
and critic on one frozen base, toy token reward, Alpaca prompts) in a subprocess for one
iteration to compile, then `warm_iterations` timed ones, and reads the per-iteration phase
times from its result.json. Each phase ends in a host read of its results, so the times
are wall-clock for finished work:
  generate  KV-cache sampling of `prompts` x `new_tokens` (stops at EOS/<end_of_turn>)
  score     policy + reference + critic pass over prompt+response, reward, advantages
  train     epochs x minibatches optimizer updates (forward + backward of policy and critic)
Rollout tokens/s counts generated tokens (rows stop early at a stop token); budget tokens/s
counts prompts x new_tokens, the work the decode loop is sized for.
"""

from __future__ import annotations

import json
import logging
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

import jax
import numpy as np
from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[2]


def measure(prompts: int = 8, new_tokens: int = 32, warm_iterations: int = 2, epochs: int = 2,
            minibatches: int = 2, log=print) -> dict[str, Any]:
  """One compiling iteration, then `warm_iterations` timed ones; their mean time split."""
  iterations = 1 + warm_iterations
  with tempfile.TemporaryDirectory() as workdir:
    subprocess.run(
        [sys.executable, "-m", "alignment.main", "--config=configs/ppo.py:demo_270m",
         f"--config.workdir={workdir}", f"--config.rollout.prompts_per_iteration={prompts}",
         f"--config.rollout.max_new_tokens={new_tokens}", f"--config.ppo.epochs={epochs}",
         f"--config.ppo.num_minibatches={minibatches}", f"--config.train.iterations={iterations}",
         f"--config.checkpoint.every={iterations}", "--config.train.progress_bar=False"],
        check=True, cwd=REPO)
    history = json.loads((pathlib.Path(workdir) / "result.json").read_text())["history"]
  rows = []
  for h in history:
    tokens = h["response_length"] * prompts
    rows.append((h["time_generate"], h["time_score"], h["time_train"], tokens))
    log(f"iteration {h['iteration']}{' (compiles)' if h['iteration'] == 1 else ''}: generate "
        f"{h['time_generate']:.2f} s, score {h['time_score']:.2f} s, train "
        f"{h['time_train']:.2f} s; {tokens:.0f} tokens generated, reward {h['reward']:.3f}, "
        f"kl {h['kl']:.3f}")
  warm = np.array(rows[1:] if len(rows) > 1 else rows[:1], np.float64)
  gen, score, train, tokens = warm.mean(axis=0)
  return {"mode": "ppo", "model": "gemma3_270m embedded (configs/ppo.py:demo_270m)",
          "prompts": prompts, "new_tokens": new_tokens, "epochs": epochs,
          "minibatches": minibatches, "batch_shape": history[-1]["rollout_shape"],
          "first_iteration_s": float(sum(rows[0][:3])), "generate_s": float(gen),
          "score_s": float(score), "train_s": float(train),
          "iteration_s": float(gen + score + train),
          "rollout_tokens_per_s": float(tokens / gen),
          "budget_tokens_per_s": float(prompts * new_tokens / gen)}


def summary(row: dict[str, Any]) -> str:
  """The time split as two lines of text."""
  total = row["iteration_s"]
  share = lambda key: f"{row[key]:.2f} s ({100 * row[key] / total:.0f}%)"
  return (f"warm PPO iteration ({row['model']}; [B, P+R] = {row['batch_shape']}, "
          f"{row['epochs']} epochs x {row['minibatches']} minibatches): {total:.2f} s = "
          f"generate {share('generate_s')} + score {share('score_s')} + train "
          f"{share('train_s')}\nrollout tokens/s: {row['rollout_tokens_per_s']:.1f} generated, "
          f"{row['budget_tokens_per_s']:.1f} budget")


def define_flags() -> None:
  """Command-line flags, defined only when run as a program (run.py imports `measure`)."""
  flags.DEFINE_integer("prompts", 8, "Prompts per iteration (one sample each).")
  flags.DEFINE_integer("new_tokens", 32, "Response token budget.")
  flags.DEFINE_integer("warm_iterations", 2, "Timed iterations after the first.")
  flags.DEFINE_integer("epochs", 2, "PPO epochs per iteration.")
  flags.DEFINE_integer("minibatches", 2, "Mini-batches per epoch.")


def main(_):
  logging.getLogger("absl").setLevel(logging.WARNING)
  f = flags.FLAGS
  row = measure(f.prompts, f.new_tokens, f.warm_iterations, f.epochs, f.minibatches)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(summary(row))


if __name__ == "__main__":
  define_flags()
  app.run(main)
