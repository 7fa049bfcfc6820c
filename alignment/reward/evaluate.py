"""Held-out evaluation of a reward model: accuracy, score distributions, calibration.

Calibration follows the Bradley-Terry reading of the scores: the model's probability that the
chosen reply wins is p = sigmoid(r_c - r_r). Every pair is labelled "chosen wins", so binning
p against that label alone would show accuracy 1 everywhere; the diagram is therefore drawn
for the model's own pick, confidence max(p, 1 - p) in [0.5, 1] against the share of pairs
where that pick is the human-chosen reply. A calibrated model lies on the diagonal.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from alignment.data import batching
from alignment.reward.losses import ranking_loss
from alignment.training import distributed


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def score_pairs(score_fn, params, pairs: list, batch_size: int, max_length: int, mesh,
                pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(r_chosen, r_rejected) over `pairs`, in fixed-size batches (the last padded by repeats,
  whose scores are dropped); `score_fn` is `model.make_pair_score_fn`'s."""
  buckets = batching.default_buckets(max_length)
  chosen, rejected = [], []
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    padded = chunk + [chunk[0]] * (batch_size - len(chunk))
    batch = distributed.global_batch(batching.pad_pair_batch(padded, buckets, pad_id), mesh)
    r_c, r_r = score_fn(params, batch)
    chosen.append(np.asarray(r_c)[:len(chunk)])
    rejected.append(np.asarray(r_r)[:len(chunk)])
  return np.concatenate(chosen), np.concatenate(rejected)


def pairwise_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray) -> float:
  """Share of pairs ranked right; a tie counts as half (a coin flip)."""
  diff = np.asarray(r_chosen, np.float64) - np.asarray(r_rejected, np.float64)
  if diff.size == 0:
    raise ValueError("no pairs to evaluate")
  return float(np.mean(np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))))


def distribution(x: np.ndarray) -> dict[str, float]:
  """Summary of a score sample (mean, std and quantiles)."""
  x = np.asarray(x, np.float64)
  q = np.quantile(x, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
  names = ("min", "p10", "p25", "median", "p75", "p90", "max")
  return {"mean": float(x.mean()), "std": float(x.std()), **dict(zip(names, map(float, q)))}


def calibration_bins(r_chosen: np.ndarray, r_rejected: np.ndarray,
                     num_bins: int = 5) -> list[dict[str, Any]]:
  """Equal-width bins of confidence over [0.5, 1]: count, mean confidence, accuracy."""
  diff = np.asarray(r_chosen, np.float64) - np.asarray(r_rejected, np.float64)
  confidence = _sigmoid(np.abs(diff))
  correct = np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))
  edges = np.linspace(0.5, 1.0, num_bins + 1)
  which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, num_bins - 1)
  bins = []
  for b in range(num_bins):
    inside = which == b
    n = int(inside.sum())
    bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n,
                 "confidence": float(confidence[inside].mean()) if n else None,
                 "accuracy": float(correct[inside].mean()) if n else None})
  return bins


def expected_calibration_error(bins: Iterable[dict[str, Any]]) -> float:
  """Count-weighted mean |accuracy - confidence| over non-empty bins."""
  bins = [b for b in bins if b["count"]]
  total = sum(b["count"] for b in bins)
  return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total)


def evaluation_report(r_chosen: np.ndarray, r_rejected: np.ndarray,
                      num_bins: int = 5) -> dict[str, Any]:
  """Everything the eval JSON holds about one set of scored pairs."""
  r_chosen = np.asarray(r_chosen, np.float32)
  r_rejected = np.asarray(r_rejected, np.float32)
  loss, _ = ranking_loss(r_chosen, r_rejected)
  bins = calibration_bins(r_chosen, r_rejected, num_bins)
  n = len(r_chosen)
  accuracy = pairwise_accuracy(r_chosen, r_rejected)
  return {
      "pairs": n,
      "accuracy": accuracy,
      # Binomial standard error: how far from 0.5 chance the accuracy is, honestly.
      "accuracy_stderr": float(np.sqrt(accuracy * (1 - accuracy) / n)),
      "ranking_loss": float(loss),
      "chosen": distribution(r_chosen),
      "rejected": distribution(r_rejected),
      "gap": distribution(r_chosen - r_rejected),
      "calibration": bins,
      "expected_calibration_error": expected_calibration_error(bins),
  }


def plot_calibration(report: dict[str, Any], path: str | pathlib.Path, title: str = ""
                     ) -> pathlib.Path:
  """Reliability diagram (left) and chosen/rejected score histograms (right), as a PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  scores = report["scores"]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  bins = [b for b in report["calibration"] if b["count"]]
  ax1.plot([0.5, 1.0], [0.5, 1.0], "k--", lw=1, label="perfect calibration")
  ax1.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
           label=f"model (ECE {report['expected_calibration_error']:.3f})")
  for b in bins:
    ax1.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), textcoords="offset points",
                 xytext=(0, 6), ha="center", fontsize=8)
  ax1.set(xlim=(0.5, 1.0), ylim=(0.0, 1.0), xlabel="predicted P(pick wins) = sigmoid(|r_c - r_r|)",
          ylabel="empirical accuracy", title="calibration (n per point)")
  ax1.legend(loc="lower right", fontsize=8)
  chosen, rejected = np.asarray(scores["chosen"]), np.asarray(scores["rejected"])
  edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=30)
  ax2.hist(chosen, bins=edges, alpha=0.6, label="chosen")
  ax2.hist(rejected, bins=edges, alpha=0.6, label="rejected")
  ax2.set(xlabel="reward r(x, y)", ylabel="pairs",
          title=f"scores (accuracy {report['accuracy']:.3f}, n={report['pairs']})")
  ax2.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
