"""MinHash signatures and LSH banding over byte shingles, with numpy over all texts at once.

Each text becomes character shingles of `shingle_size` bytes (<= 8, so each shingle packs
losslessly into a uint64); signatures use multiply-shift hashing over `num_perm` permutations;
LSH banding proposes the candidate pairs. (Written with numpy rather than taking `datasketch` as
a dependency: it is a few dozen lines, vectorized over all shingles at once, and the
packed-byte shingles need no string hashing, which Python salts per process.)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def shingle_ids(texts: Sequence[str], shingle_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids, offsets): uint64 ids of every byte shingle of every text, and each text's slice.

  A text shorter than `shingle_size` bytes is zero-padded so that it has exactly one shingle.
  """
  k = shingle_size
  encoded = [t.encode("utf-8").ljust(k, b"\0") for t in texts]
  lengths = np.array([len(b) for b in encoded], dtype=np.int64)
  buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)
  weights = np.uint64(256) ** np.arange(k, dtype=np.uint64)
  windows = np.lib.stride_tricks.sliding_window_view(buf, k)
  ids = (windows.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
  starts = np.cumsum(lengths) - lengths
  counts = lengths - k + 1
  # A window is a shingle of its text when it starts at most len - k bytes into the text.
  text_of = np.repeat(np.arange(len(texts)), lengths)[:len(ids)]
  keep = np.arange(len(ids)) - starts[text_of] < counts[text_of]
  offsets = np.concatenate([[0], np.cumsum(counts)])
  return ids[keep], offsets


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: spreads the (mostly low) bits of packed shingles over 64 bits."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def minhash_signatures(ids: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int = 0,
                       chunk: int = 1 << 13) -> np.ndarray:
  """[num_texts, num_perm] uint32 MinHash signatures; h_p(x) = (a_p * x + b_p) mod 2^64 >> 32."""
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
  b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
  mixed = _mix64(ids)
  num_texts = len(offsets) - 1
  sig = np.empty((num_texts, num_perm), dtype=np.uint32)
  buf = np.empty((chunk, num_perm), dtype=np.uint64)
  t = 0
  with np.errstate(over="ignore"):
    while t < num_texts:
      # A block of whole texts holding at most `chunk` shingles (or one longer text).
      end = max(int(np.searchsorted(offsets, offsets[t] + chunk, side="right")) - 1, t + 1)
      lo, hi = offsets[t], offsets[end]
      h = buf[:hi - lo] if hi - lo <= chunk else np.empty((hi - lo, num_perm), np.uint64)
      np.multiply(mixed[lo:hi, None], a[None, :], out=h)
      h += b
      h >>= np.uint64(32)
      sig[t:end] = np.minimum.reduceat(h, offsets[t:end] - lo, axis=0)
      t = end
  return sig


def lsh_candidates(sig: np.ndarray, bands: int, seed: int = 0) -> set[tuple[int, int]]:
  """Pairs (i < j) whose signatures agree on all rows of at least one band.

  Each band's rows are folded into one uint64 key; a rare key collision only adds a candidate,
  which the exact Jaccard check then rejects.
  """
  rows = sig.shape[1] // bands
  mult = np.random.default_rng(seed + 1).integers(1, 2**63, size=rows, dtype=np.uint64) | 1
  pairs: set[tuple[int, int]] = set()
  with np.errstate(over="ignore"):
    for band in range(bands):
      keys = (sig[:, band * rows:(band + 1) * rows].astype(np.uint64) * mult).sum(
          axis=1, dtype=np.uint64)
      order = np.argsort(keys, kind="stable")
      sorted_keys = keys[order]
      starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
      sizes = np.diff(np.r_[starts, len(keys)])
      for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
        members = sorted(order[start:start + size].tolist())
        pairs.update(itertools.combinations(members, 2))
  return pairs
