"""The machine's own ceilings, measured in the same run: a dense-matmul peak (FLOP/s) and a
memory bandwidth (bytes/s). Where no datasheet peak exists (a CPU), achieved figures are given as
ratios to these, so "close to the limit" is a number on any backend.

Both are best-of-`repeats` timings of one jitted program after a warm call:
- matmul: [n, n] @ [n, n] in `dtype`, 2 n^3 FLOPs (n = 2048: large enough for BLAS to reach
  its steady rate, small enough to take well under a second on two cores);
- read: sum(x) over a float32 vector of `nbytes` (far beyond the caches), nbytes read. A
  decode step reads its weights and cache once and writes little, so this is its ceiling;
- copy: y = x + 1 over the same vector, 2 * nbytes read + written. On the CPU it runs far below
  the read rate (XLA's elementwise loop and the fresh output buffer's page faults), so it is
  printed for reference only.
Load from other processes lowers a ceiling and so inflates the ratios: `best` keeps the higher
of two measurements (before and after the runs).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(fn())  # compile and warm
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
  """Achieved FLOP/s of one [n, n] @ [n, n] matmul on the default device (best of repeats)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  return 2 * n**3 / _best_seconds(lambda: matmul(a, b), repeats)


def _vector(nbytes: int) -> jax.Array:
  return jax.random.uniform(jax.random.key(2), (nbytes // 4,), jnp.float32)


def read_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
  """Bytes read per second by a sum over `nbytes` of float32."""
  x, total = _vector(nbytes), jax.jit(jnp.sum)
  return nbytes / _best_seconds(lambda: total(x), repeats)


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
  """Bytes read + written per second by an elementwise pass over `nbytes` of float32."""
  x, add = _vector(nbytes), jax.jit(lambda v: v + 1)
  return 2 * nbytes / _best_seconds(lambda: add(x), repeats)


def ceilings(dtype: str = "float32", repeats: int = 5) -> dict[str, float]:
  return {"matmul_flops_per_s": matmul_peak(dtype=dtype, repeats=repeats),
          "read_bytes_per_s": read_bandwidth(repeats=repeats),
          "copy_bytes_per_s": copy_bandwidth(repeats=repeats)}


def best(*measured: dict[str, float]) -> dict[str, float]:
  """The highest of each ceiling over several measurements."""
  return {key: max(m[key] for m in measured) for key in measured[0]}


def with_ratios(rows: list[dict[str, Any]], ceiling: dict[str, float]) -> list[dict[str, Any]]:
  """Adds `flops_ratio` (achieved FLOP/s / matmul peak) and `bytes_ratio` (achieved bytes/s /
  read bandwidth) to the rows that have the achieved figure."""
  out = []
  for row in rows:
    row = dict(row)
    if row.get("flops_per_s"):
      row["flops_ratio"] = row["flops_per_s"] / ceiling["matmul_flops_per_s"]
    if row.get("bytes_per_s"):
      row["bytes_ratio"] = row["bytes_per_s"] / ceiling["read_bytes_per_s"]
    out.append(row)
  return out
