"""Compile time of the unrolled vs the scanned decoder, and temporary memory per remat policy.

  python -m experiments.benchmarks.compile_time [--base=gemma3_270m] [--num_layers=26]
      [--embed_dim=64] [--batch_size=2] [--seq_len=64] [--output=compile_time.json]

The model is the `--base` preset's layer pattern over `--num_layers` layers with tiny widths,
so the figures measure what the layer count costs the compiler, not the matmuls. For every
(scan_layers, remat) pair it jits the gradient of a next-token loss on random parameters and
reports trace + lower and compile seconds, XLA's memory analysis (temporaries: what remat
trades against recomputation) and the loss of one run (equal across rows: the choices must
not change the numbers).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

from alignment import model as M

_BASE = flags.DEFINE_string("base", "gemma3_270m", "Preset whose layer pattern is used.")
_LAYERS = flags.DEFINE_integer("num_layers", 26, "Decoder layers.")
_EMBED = flags.DEFINE_integer("embed_dim", 64, "Model width (FFN 2x, 4 heads of embed/4).")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 64, "Tokens per sequence.")
_REMATS = flags.DEFINE_list("remat", ["none", "full", "dots_saveable"], "Remat policies.")
_OUTPUT = flags.DEFINE_string("output", "", "Write the rows here as JSON.")

COLUMNS = ("scan_layers", "remat", "lower_s", "compile_s", "temp_bytes", "argument_bytes",
           "loss")


def bench_config(base: str, num_layers: int, embed_dim: int) -> M.ModelConfig:
  """`base`'s pattern and flags with tiny widths (vocab 512, window 8 < seq_len)."""
  heads = 4
  return M.get_config(
      base, num_layers=num_layers, embed_dim=embed_dim, hidden_dim=2 * embed_dim,
      num_heads=heads, num_kv_heads=1, head_dim=embed_dim // heads, vocab_size=512,
      query_pre_attn_scalar=embed_dim // heads,
      sliding_window_size=8 if M.get_config(base).sliding_window_size else None)


def measure(cfg: M.ModelConfig, params: Any, tokens: jax.Array) -> dict[str, Any]:
  """Lower and compile d loss / d params for `cfg` (fresh: each config is a new function)."""
  valid = jnp.ones(tokens.shape, bool)
  positions, mask = M.positions_from_mask(valid), M.causal_mask(valid)

  def loss(p):
    logits, _ = M.forward(cfg, p, tokens, positions, mask)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

  start = time.perf_counter()
  lowered = jax.jit(jax.value_and_grad(loss)).lower(params)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  memory = compiled.memory_analysis()
  value, _ = compiled(params)
  return {"scan_layers": cfg.scan_layers, "remat": cfg.remat,
          "lower_s": round(lowered_at - start, 2), "compile_s": round(compiled_at - lowered_at, 2),
          "temp_bytes": int(memory.temp_size_in_bytes),
          "argument_bytes": int(memory.argument_size_in_bytes), "loss": float(value)}


def main(argv: list[str]) -> None:
  del argv
  cfg = bench_config(_BASE.value, _LAYERS.value, _EMBED.value)
  print(f"{_BASE.value} pattern, {cfg.num_layers} layers (period {len(cfg.attention_pattern)}),"
        f" embed {cfg.embed_dim}, {cfg.num_params():,} params, batch {_BATCH.value} x "
        f"{_SEQ.value} tokens; backend {jax.default_backend()}, {os.cpu_count()} cpus, load "
        f"average {os.getloadavg()[0]:.1f}", flush=True)
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (_BATCH.value, _SEQ.value), 0, cfg.vocab_size)
  rows = []
  for scan in (False, True):
    for remat in _REMATS.value:
      rows.append(measure(cfg.replace(scan_layers=scan, remat=remat), params, tokens))
      print(json.dumps({k: rows[-1][k] for k in COLUMNS}), flush=True)
  print(f"load average at the end {os.getloadavg()[0]:.1f}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"config": str(cfg), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
