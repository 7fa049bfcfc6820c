"""Intervals for the rates a safety evaluation reports.

Rates here come from a few dozen prompts, so every one is printed with its 95% interval:
Wilson's score interval for a proportion (sound at k = 0 or k = n, unlike the normal
approximation), and Newcombe's hybrid score interval for the difference of two independent
proportions (method 10 of Newcombe, Statistics in Medicine 1998), built from the two Wilson
intervals. Cohen's kappa measures a judge's agreement with labels beyond chance; a percentile
bootstrap gives the interval of a mean score.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclasses.dataclass(frozen=True)
class Rate:
  """k of n, with its Wilson 95% interval (all None when n = 0)."""

  k: int
  n: int

  @property
  def value(self) -> float | None:
    return self.k / self.n if self.n else None

  @property
  def interval(self) -> tuple[float, float] | None:
    return wilson(self.k, self.n) if self.n else None

  def to_dict(self) -> dict:
    lo_hi = self.interval
    return {"k": self.k, "n": self.n, "rate": self.value,
            "low": lo_hi[0] if lo_hi else None, "high": lo_hi[1] if lo_hi else None}

  def pct(self) -> str:
    """'12.5% [4.3, 31.0] (3/24)' for tables."""
    if not self.n:
      return "–"
    lo, hi = wilson(self.k, self.n)
    return f"{100 * self.k / self.n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({self.k}/{self.n})"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval for k successes in n trials."""
  if n <= 0:
    raise ValueError(f"wilson: n must be positive, got {n}")
  if not 0 <= k <= n:
    raise ValueError(f"wilson: k must be in [0, n], got k={k}, n={n}")
  p = k / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def difference(a: Rate, b: Rate, z: float = Z95) -> tuple[float, float, float] | None:
  """(p_a - p_b, low, high): Newcombe's hybrid score interval; None if either n is 0."""
  if not (a.n and b.n):
    return None
  pa, pb = a.k / a.n, b.k / b.n
  la, ua = wilson(a.k, a.n, z)
  lb, ub = wilson(b.k, b.n, z)
  d = pa - pb
  low = d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
  high = d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
  return d, max(-1.0, low), min(1.0, high)


def cohen_kappa(truth: Sequence[bool], predicted: Sequence[bool]) -> float | None:
  """Cohen's kappa of two binary labelings (None when chance agreement is 1)."""
  if len(truth) != len(predicted):
    raise ValueError(f"cohen_kappa: {len(truth)} labels vs {len(predicted)} predictions")
  n = len(truth)
  if not n:
    return None
  observed = sum(t == p for t, p in zip(truth, predicted)) / n
  pt, pp = sum(truth) / n, sum(predicted) / n
  expected = pt * pp + (1 - pt) * (1 - pp)
  if expected >= 1.0:
    return None
  return (observed - expected) / (1 - expected)


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
  """Mean, min, max and sample standard deviation of per-seed rates."""
  vals = [v for v in values if v is not None]
  if not vals:
    return {"seeds": 0, "mean": None, "min": None, "max": None, "sd": None}
  mean = sum(vals) / len(vals)
  sd = (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        if len(vals) > 1 else None)
  return {"seeds": len(vals), "mean": mean, "min": min(vals), "max": max(vals), "sd": sd}


def bootstrap_mean(values: Sequence[float], resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, float | int | None]:
  """Mean with a percentile bootstrap interval (for reward-model scores, which are not
  proportions): {"n", "mean", "low", "high"}; all None but n when there are no values."""
  vals = np.asarray([v for v in values if v is not None], np.float64)
  if vals.size == 0:
    return {"n": 0, "mean": None, "low": None, "high": None}
  if resamples < 1 or not 0 < level < 1:
    raise ValueError(f"bootstrap_mean: resamples={resamples} must be >= 1 and level={level} "
                     "in (0, 1)")
  rng = np.random.default_rng(seed)
  means = vals[rng.integers(0, vals.size, (resamples, vals.size))].mean(axis=1)
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(means, [tail, 100 - tail])
  return {"n": int(vals.size), "mean": float(vals.mean()), "low": float(low),
          "high": float(high)}
