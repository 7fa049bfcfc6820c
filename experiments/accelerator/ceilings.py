"""What the device itself reaches: a dense bf16 matmul's FLOP/s and a copy's bytes/s.

MFU and the decode bound are quoted against datasheet peaks (`accounting`); these measured
ceilings say how much of a shortfall is the chip (clocks, power) rather than our programs.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def _best_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def matmul_flops(n: int, repeats: int, dtype=jnp.bfloat16) -> dict:
  """Best FLOP/s of an [n, n] x [n, n] product (2 n^3 FLOPs), random normal inputs (random
  bits draw more power than zeros, so the clocks are the ones a real step sees)."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  seconds = _best_seconds(jax.jit(jnp.matmul), (a, b), repeats)
  return {"figure": "matmul_flops_per_s", "n": n, "dtype": jnp.dtype(dtype).name,
          "seconds": seconds, "value": 2.0 * n ** 3 / seconds}


def copy_bandwidth(num_bytes: int, repeats: int) -> dict:
  """Best bytes/s of y = x + 1 over a bf16 array of `num_bytes`: each call reads and writes
  the array once, so 2 * num_bytes move (the convention of a device-to-device copy)."""
  x = jnp.ones((num_bytes // 2,), jnp.bfloat16)
  seconds = _best_seconds(jax.jit(lambda v: v + 1), (x,), repeats)
  return {"figure": "copy_bytes_per_s", "bytes": num_bytes, "seconds": seconds,
          "value": 2.0 * num_bytes / seconds}
