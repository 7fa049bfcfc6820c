"""Packing: no token lost, segment ids and positions right, first fit, same logits as unpacked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import model as M
from alignment.data import packing


def _examples(lengths, seed=0, vocab=50):
  rng = np.random.default_rng(seed)
  return [{"tokens": rng.integers(3, vocab, n).astype(np.int32),
           "loss_mask": (rng.random(n) < 0.6).astype(np.float32)} for n in lengths]


def _segments(row):
  """The (tokens, loss_mask, positions) of each segment of a packed row, in order."""
  out = []
  for s in range(1, int(row["segment_ids"].max()) + 1):
    where = np.flatnonzero(row["segment_ids"] == s)
    assert where.size and np.all(np.diff(where) == 1), f"segment {s} is not contiguous"
    out.append((row["tokens"][where], row["loss_mask"][where], row["positions"][where]))
  return out


def _reference_first_fit(lengths, row_length, rows):
  """Which examples each row holds, by the textbook rule: a window of `rows` bins, an example
  goes to the first bin with room, and when none has room the window is emitted."""
  out, bins = [], [[] for _ in range(rows)]
  free = [row_length] * rows
  for i, n in enumerate(lengths):
    fit = next((b for b in range(rows) if free[b] >= n), None)
    if fit is None:
      out += [b for b in bins if b]
      bins, free, fit = [[] for _ in range(rows)], [row_length] * rows, 0
    bins[fit].append(i)
    free[fit] -= n
  return out + [b for b in bins if b]


def test_packing_invariants_and_first_fit():
  rng = np.random.default_rng(1)
  lengths = rng.integers(1, 30, 200).tolist()
  examples = _examples(lengths)
  row_length, rows = 32, 4
  packed, cut = packing.pack_examples(examples, row_length, rows, pad_id=7)
  assert cut == 0
  expected = _reference_first_fit(lengths, row_length, rows)
  assert len(packed) == len(expected)
  for row, members in zip(packed, expected):
    assert row["tokens"].shape == (row_length,) and row["tokens"].dtype == np.int32
    assert row["segment_ids"].dtype == np.int32 and row["positions"].dtype == np.int32
    np.testing.assert_array_equal(row["input_mask"], row["segment_ids"] != 0)
    pad = ~row["input_mask"]
    assert (row["tokens"][pad] == 7).all() and (row["loss_mask"][pad] == 0).all()
    assert (row["positions"][pad] == 0).all()
    assert row["input_mask"][:int(row["input_mask"].sum())].all()  # padding only at the end
    segments = _segments(row)
    assert len(segments) == len(members)
    for (tokens, loss_mask, positions), i in zip(segments, members):
      np.testing.assert_array_equal(tokens, examples[i]["tokens"])
      np.testing.assert_array_equal(loss_mask, examples[i]["loss_mask"])
      np.testing.assert_array_equal(positions, np.arange(len(tokens)))
  assert sum(int(r["input_mask"].sum()) for r in packed) == sum(lengths)  # no token lost


def test_long_examples_are_truncated_and_counted():
  lengths = [5, 40, 12, 33, 3]
  examples = _examples(lengths, seed=2)
  packed, cut = packing.pack_examples(examples, row_length=32, rows=2)
  assert cut == sum(n > 32 for n in lengths) == 2
  seen = [seg[0] for row in packed for seg in _segments(row)]
  assert sorted(map(len, seen)) == sorted(min(n, 32) for n in lengths)
  for tokens in seen:
    source = next(e["tokens"] for e in examples if np.array_equal(e["tokens"][:len(tokens)],
                                                                   tokens))
    assert len(tokens) == min(len(source), 32)
  with pytest.raises(ValueError, match="empty list"):
    packing.pack_examples([], 32, 2)
  with pytest.raises(ValueError, match="row_length must be positive"):
    packing.pack_examples(examples, 0, 2)


def _masked_nll(logits, tokens, loss_mask):
  """Sum of next-token losses weighted by the target's loss_mask (the trainers' convention)."""
  logp = jax.nn.log_softmax(logits[:-1], axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[1:, None], axis=-1)[:, 0]
  return jnp.sum(nll * loss_mask[1:])


def test_packed_row_gives_each_segment_its_own_logits():
  """Attention through `segment_causal_mask` and per-segment positions isolates segments.

  Reference: each example alone in its own row (right-padded to the same width, plain causal
  mask), all in one batch so the model compiles once.
  """
  cfg = M.get_config("tiny_gemma3")  # local and global layers, QK-norm
  rng = np.random.default_rng(0)  # random weights straight from the shapes: cheaper than init
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                        M.param_shapes(cfg))
  lengths = [11, 3, 14]  # 11 and 14 exceed the tiny sliding window (8)
  examples = _examples(lengths, seed=3, vocab=cfg.vocab_size)
  packed, _ = packing.pack_examples(examples, row_length=32, rows=1)
  assert len(packed) == 1 and packed[0]["segment_ids"].max() == 3
  row = packed[0]
  alone = np.zeros((3, 32), np.int32)
  alone_valid = np.zeros((3, 32), bool)
  for i, e in enumerate(examples):
    alone[i, :len(e["tokens"])] = e["tokens"]
    alone_valid[i, :len(e["tokens"])] = True
  tokens = jnp.asarray(np.concatenate([row["tokens"][None], row["tokens"][None], alone]))
  positions = jnp.concatenate([row["positions"][None], row["positions"][None],
                               M.positions_from_mask(alone_valid)])
  mask = jnp.concatenate([
      M.segment_causal_mask(jnp.asarray(row["segment_ids"])[None]),
      M.causal_mask(jnp.asarray(row["input_mask"])[None]),  # leaky: no segment boundaries
      M.causal_mask(jnp.asarray(alone_valid))])
  logits = np.asarray(jax.jit(lambda t, p, m: M.forward(cfg, params, t, p, m)[0])(
      tokens, positions, mask))
  start = 0
  for i, example in enumerate(examples):
    n = len(example["tokens"])
    np.testing.assert_allclose(logits[0, start:start + n], logits[2 + i, :n],
                               atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(
        _masked_nll(logits[0, start:start + n], example["tokens"], example["loss_mask"]),
        _masked_nll(logits[2 + i, :n], example["tokens"], example["loss_mask"]), rtol=1e-4)
    start += n
  # Sanity: without the segment mask the later segments do see the earlier ones.
  assert not np.allclose(logits[1, 11:14], logits[0, 11:14], atol=1e-3)
