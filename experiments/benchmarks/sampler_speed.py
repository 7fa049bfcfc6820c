"""Prefill and decode throughput of the sampler on the embedded Gemma 3 270M.

  python -m experiments.benchmarks.sampler_speed [--batch_sizes=1,8] [--prompt_len=256]
      [--new_tokens=63] [--dtype=float32] [--repeats=3]

Both figures come from one compiled program (`measure.bench_sampler`: the sampler's
traceable core `generate_padded` with the token budget traced and one cache capacity), run
on random prompt ids with no stop ids (every row decodes the full budget):
  prefill: a call with max_new_tokens=1 (prefill, the first token's sampling, no decode step);
  decode:  a call with max_new_tokens=1+N, minus the prefill call: N one-token steps.
Calling `generate` twice instead would be wrong: it buckets the cache capacity by the budget
(16 slots for 1 token, 128 for 65), so the two calls would compile and run different programs
with different cache sizes, and their difference would not be N decode steps.
Compile time is the first call minus a warm call of the same shape; timings are the best of
`repeats` warm calls. The default 1 + 63 = 64 budget fills the cache capacity exactly, and a
power-of-two prompt length needs no prompt padding.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
from absl import app
from absl import flags

from alignment.checkpoints.embedded import load_embedded
from experiments.benchmarks import measure

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 256, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 63, "Decode steps timed (budget = 1 + this).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm calls per measurement (best is kept).")


def measure_batch(cfg, params: Any, batch: int, prompt_len: int, new_tokens: int,
                  repeats: int) -> dict[str, Any]:
  """One table row: compile, prefill and decode figures of one compiled program."""
  prefill, decode = measure.bench_sampler(cfg, params, batch, prompt_len, new_tokens, repeats)
  return {"batch": batch, "compile_s": prefill["compile_s"], "prefill_s": prefill["seconds"],
          "prefill_tokens_per_s": prefill["tokens_per_s"], "decode_s": decode["seconds"],
          "decode_tokens_per_s": decode["tokens_per_s"], "ms_per_step": decode["ms_per_step"],
          "kv_len": decode["kv_len"]}


def main(argv: list[str]) -> None:
  del argv
  start = time.perf_counter()
  cfg, params, _ = load_embedded(_DTYPE.value)
  cfg = cfg.replace(dtype=_DTYPE.value, param_dtype=_DTYPE.value)
  print(f"loaded gemma3_270m ({_DTYPE.value}) in {time.perf_counter() - start:.1f} s; "
        f"backend {jax.default_backend()}, {jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} host CPU(s), load average "
        f"{os.getloadavg()[0]:.2f}")
  prompt_len, new_tokens = _PROMPT_LEN.value, _NEW_TOKENS.value
  print(f"prompt {prompt_len} tokens, {new_tokens} timed decode steps, greedy, best of "
        f"{_REPEATS.value}")
  print(f"{'batch':>5} {'compile s':>9} {'prefill s':>9} {'prefill tok/s':>13} "
        f"{'decode s':>8} {'decode tok/s':>12} {'ms/step':>8}")
  for batch in map(int, _BATCH_SIZES.value):
    row = measure_batch(cfg, params, batch, prompt_len, new_tokens, _REPEATS.value)
    if row["decode_s"] is None:
      print(f"{batch:>5} {row['compile_s']:>9.1f} {row['prefill_s']:>9.3f} "
            f"{row['prefill_tokens_per_s']:>13.0f}  decode below timing noise")
      continue
    print(f"{batch:>5} {row['compile_s']:>9.1f} {row['prefill_s']:>9.3f} "
          f"{row['prefill_tokens_per_s']:>13.0f} {row['decode_s']:>8.3f} "
          f"{row['decode_tokens_per_s']:>12.1f} {row['ms_per_step']:>8.1f}")


if __name__ == "__main__":
  app.run(main)
