"""One benchmark entry: training, prefill, decode (and PPO) throughput of a model config.

  python -m experiments.benchmarks.run --model=gemma3_270m --checkpoint=random \
      --batch_size=8 --seq_len=1024 \
      --what=train_lora,train_lora_unmerged,train_full,prefill,decode,ppo \
      --dtype=bfloat16 [--steps=5] [--new_tokens=64] [--logits_chunk=0] [--output=bench.json]

Training runs the SFT job's own pieces (loss, LoRA merge, optax optimizer, sharded state,
donating jit) on random token ids of shape [batch_size, seq_len + 1] (the model sees seq_len
inputs). `train_lora_unmerged` applies the adapters as low-rank paths inside the projections
instead of merged weights; `--logits_chunk=N` computes the loss with the chunked vocabulary
cross-entropy, N positions at a time (`alignment.training.losses`). Per mode it prints tokens/s,
model FLOPs (see `accounting`), XLA's compiled FLOPs, achieved FLOP/s, MFU (None where the
device's peak is unknown, e.g. CPU) and the compiled step's per-device memory. Prefill and
decode time the sampler's compiled program (`generate_padded`): prefill = a call with a 1-token
budget; decode = a call with 1 + new_tokens minus the prefill call. Decode also reports the
bytes a step must read (all parameters + the allocated KV cache) and what fraction of the HBM
bandwidth bound it reaches. `ppo` times one PPO iteration of the embedded 270M PPO demo setup
(`ppo_iteration.py`; batch_size prompts x new_tokens) split into generate / score / train,
whatever `--model` says. `--roofline` (default on) also measures this machine's dense-matmul
peak and memory read bandwidth (`roofline.py`, before and after the runs, best kept) and prints each achieved figure as a ratio to them
(`flops_ratio`, `bytes_ratio`): the CPU's stand-in for MFU and the HBM fraction. Timings: one warm call, then the median of `steps` (train) or best
of `repeats`.

Never run in CI: at real sizes it takes minutes; `tests/test_benchmarks.py` checks the
accounting on tiny configs.
"""

from __future__ import annotations

import json
import time

import jax
from absl import app, flags

from alignment import lora as lora_lib
from alignment.checkpoints.loading import load_model
from experiments.benchmarks import accounting, ppo_iteration, roofline
from experiments.benchmarks.measure import (SAMPLE_COLUMNS, TRAIN_COLUMNS, WHAT, bench_ppo,
                                            bench_sampler, bench_train, environment,
                                            model_section)

_MODEL = flags.DEFINE_string("model", "gemma3_270m", "Model preset.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "random", "'random' or 'embedded' (or a path).")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Batch size (train, prefill and decode).")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Training sequence length and prompt length.")
_WHAT = flags.DEFINE_list("what", list(WHAT), f"Any of {','.join(WHAT)}.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype (training keeps float32 master weights; sampling "
                           "casts the parameters).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed training steps (median is reported).")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Timed decode steps.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Sampler calls per measurement (best is kept).")
_RANK = flags.DEFINE_integer("lora_rank", 8, "LoRA rank (all 7 projections targeted).")
_CHUNK = flags.DEFINE_integer("logits_chunk", 0, "Chunked cross-entropy over this many "
                               "positions at a time (0: full [B, T, V] logits).")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results here as JSON.")
_ROOFLINE = flags.DEFINE_bool("roofline", True, "Measure this machine's matmul peak and copy "
                              "bandwidth first; rows get flops_ratio / bytes_ratio to them.")


def main(argv: list[str]) -> None:
  del argv
  unknown = set(_WHAT.value) - set(WHAT)
  if unknown:
    raise app.UsageError(f"--what: unknown {sorted(unknown)}; choose from {WHAT}")
  env = environment()
  print(json.dumps(env))
  start = time.perf_counter()
  cfg, base, _ = load_model(model_section(_MODEL.value, _CHECKPOINT.value, _DTYPE.value))
  print(f"loaded {_MODEL.value} ({_CHECKPOINT.value}, {cfg.num_params() / 1e6:.0f}M params) in "
        f"{time.perf_counter() - start:.1f} s")
  before = roofline.ceilings(_DTYPE.value) if _ROOFLINE.value else None
  b, t = _BATCH.value, _SEQ.value
  train_rows, sample_rows, other = [], [], []
  chunk = _CHUNK.value or None
  lcfg = lora_lib.LoraConfig(rank=_RANK.value, alpha=2.0 * _RANK.value)
  if "train_lora" in _WHAT.value:
    train_rows.append(bench_train(cfg, base, lcfg, b, t, _STEPS.value, logits_chunk=chunk))
  if "train_lora_unmerged" in _WHAT.value:
    train_rows.append(bench_train(cfg, base, lcfg, b, t, _STEPS.value, unmerged=True,
                                  logits_chunk=chunk))
  if "train_full" in _WHAT.value:
    train_rows.append(bench_train(cfg, base, None, b, t, _STEPS.value, logits_chunk=chunk))
  if "prefill" in _WHAT.value or "decode" in _WHAT.value:
    sample_params = jax.tree.map(lambda x: x.astype(_DTYPE.value), base)
    sample_cfg = cfg.replace(param_dtype=_DTYPE.value)
    sample_rows = [r for r in bench_sampler(sample_cfg, sample_params, b, t, _NEW.value,
                                            _REPEATS.value) if r["mode"] in _WHAT.value]
  if "ppo" in _WHAT.value:
    other.append(bench_ppo(b, _NEW.value))
  ceiling = None
  if _ROOFLINE.value:
    ceiling = roofline.best(before, roofline.ceilings(_DTYPE.value))
    print(f"roofline ({_DTYPE.value}, best of before/after): matmul peak "
          f"{ceiling['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s, read bandwidth "
          f"{ceiling['read_bytes_per_s'] / 1e9:.2f} GB/s, copy (read + write) "
          f"{ceiling['copy_bytes_per_s'] / 1e9:.2f} GB/s")
    train_rows = roofline.with_ratios(train_rows, ceiling)
    sample_rows = roofline.with_ratios(sample_rows, ceiling)
  if train_rows:
    print(accounting.format_table(train_rows, TRAIN_COLUMNS + ("flops_ratio",)))
  if sample_rows:
    print(accounting.format_table(sample_rows, SAMPLE_COLUMNS + ("flops_ratio", "bytes_ratio")))
  for row in other:
    print(ppo_iteration.summary(row))
  result = {"environment": env, "model": _MODEL.value, "checkpoint": _CHECKPOINT.value,
            "dtype": _DTYPE.value, "roofline": ceiling, "train": train_rows, "sampling": sample_rows,
            "other": other}
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(result, f, indent=2, default=str)
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
