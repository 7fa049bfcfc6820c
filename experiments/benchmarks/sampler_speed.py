"""Prefill and decode throughput of `alignment.sampling.generate` on the embedded Gemma 3 270M.

  python -m experiments.benchmarks.sampler_speed [--batch_sizes=1,8] [--prompt_len=256]
      [--new_tokens=64] [--dtype=float32] [--repeats=3]

Both figures come from the one compiled generate program, run on random prompt ids with no
stop ids (every row decodes the full budget):
  prefill: a call with max_new_tokens=1 (prefill, the first token's sampling, no decode step);
  decode:  a call with max_new_tokens=1+N, minus the prefill call: N one-token steps.
max_new_tokens is a traced argument, so both calls share one compilation. Compile time is
the first call minus a warm call of the same shape. Timings are the best of `repeats` warm
calls. Prompt length and token budget are powers of two so no padding inflates the work.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app
from absl import flags

from alignment.checkpoints.embedded import load_embedded
from alignment.sampling import SamplingParams, generate

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 256, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Decode steps timed (budget = 1 + this).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm calls per measurement (best is kept).")


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main(argv: list[str]) -> None:
  del argv
  start = time.perf_counter()
  cfg, params, _ = load_embedded(_DTYPE.value)
  cfg = cfg.replace(dtype=_DTYPE.value, param_dtype=_DTYPE.value)
  print(f"loaded gemma3_270m ({_DTYPE.value}) in {time.perf_counter() - start:.1f} s; "
        f"backend {jax.default_backend()}, {jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} host CPU(s)")
  prompt_len, new_tokens = _PROMPT_LEN.value, _NEW_TOKENS.value
  print(f"prompt {prompt_len} tokens, {new_tokens} timed decode steps, greedy, best of "
        f"{_REPEATS.value}")
  print(f"{'batch':>5} {'compile s':>9} {'prefill s':>9} {'prefill tok/s':>13} "
        f"{'decode s':>8} {'decode tok/s':>12} {'ms/step':>8}")
  rng = np.random.default_rng(0)
  for batch in map(int, _BATCH_SIZES.value):
    tokens = rng.integers(3, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)
    mask = np.ones_like(tokens, bool)

    def run(max_new: int):
      out = generate(cfg, params, tokens, mask, jax.random.key(0), max_new,
                     SamplingParams(), stop_ids=())
      return out.tokens

    first = _timed(lambda: run(1 + new_tokens))  # compiles; the same program serves both
    full = min(_timed(lambda: run(1 + new_tokens)) for _ in range(_REPEATS.value))
    prefill = min(_timed(lambda: run(1)) for _ in range(_REPEATS.value))
    decode = full - prefill
    print(f"{batch:>5} {first - full:>9.1f} {prefill:>9.3f} {batch * prompt_len / prefill:>13.0f} "
          f"{decode:>8.3f} {batch * new_tokens / decode:>12.1f} {1e3 * decode / new_tokens:>8.1f}")


if __name__ == "__main__":
  app.run(main)
