"""Batches of tokenized examples: bucketed padding, per-epoch shuffling, host shards, resume.

Every host runs the same global pipeline and keeps only its rows of each global batch:
  * the shuffle is grain's (`MapDataset.shuffle(seed)` on a repeated dataset, which reseeds
    every epoch), so all hosts see the same global order;
  * the padded length is chosen from the whole *global* batch, so every host's rows have the
    same shape and `jax.make_array_from_process_local_data` can assemble them;
  * host i of n takes rows [i*B/n, (i+1)*B/n) of each global batch, so the hosts' rows
    partition it exactly and the result does not depend on how many hosts there are.
    (grain's `ShardOptions` instead split the *dataset* between hosts: each host would pad
    its own examples to its own bucket, and shapes would differ between hosts.)
The last incomplete global batch of each epoch is dropped; with a new shuffle every epoch,
those examples are seen in the others.
Examples are tokenized once up front (`alignment.data.tokenize`), so padding a global batch
and dropping the other hosts' rows costs a few array copies per step. Packing is dearer: every
host packs the whole global batch (grain's packer managed ~10k Alpaca examples per CPU-second in
experiments/benchmarks/data_pipeline_speed.py), the price of identical batches on all hosts.

Padding and bucketing are numpy inside grain's `batch_fn`: grain stacks equal-shaped elements
but has no notion of bucketing by a batch's longest example or of segment ids for padded rows.
The epoch loop is a small class because grain's iterators are per dataset: a resumable state
must also say which epoch's dataset it belongs to.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from alignment.data.tokenize import Example, Pair

Batch = dict[str, Any]  # numpy arrays (pair batches nest one level: "chosen"/"rejected")


def bucket_length(longest: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `longest` tokens (jit then compiles once per bucket)."""
  fitting = [b for b in buckets if b >= longest]
  if not fitting:
    raise ValueError(f"a sequence of {longest} tokens is longer than the largest bucket "
                     f"{max(buckets)}; add a bucket or lower max_length")
  return min(fitting)


def default_buckets(max_length: int, smallest: int = 64) -> tuple[int, ...]:
  """Powers of two from `smallest` up to, and always including, `max_length`."""
  out, b = [], smallest
  while b < max_length:
    out.append(b)
    b *= 2
  return (*out, max_length)


def host_rows(global_batch_size: int, shard_index: int, shard_count: int) -> slice:
  """Which rows of each global batch host `shard_index` of `shard_count` keeps."""
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, shard_count); got {shard_index} of "
                     f"{shard_count}")
  if global_batch_size % shard_count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"{shard_count} hosts")
  per_host = global_batch_size // shard_count
  return slice(shard_index * per_host, (shard_index + 1) * per_host)


def _right_pad(seqs: Sequence[np.ndarray], length: int, value, dtype) -> np.ndarray:
  out = np.full((len(seqs), length), value, dtype)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out


def _padded_layout(lengths: Sequence[int], length: int) -> Batch:
  """positions/segment_ids/input_mask for right-padded single-sequence rows."""
  arange = np.arange(length, dtype=np.int32)
  input_mask = arange[None, :] < np.asarray(lengths)[:, None]
  return {"positions": np.where(input_mask, arange, 0).astype(np.int32),
          "segment_ids": input_mask.astype(np.int32), "input_mask": input_mask}


def pad_batch(examples: Sequence[Example], buckets: Sequence[int], pad_id: int = 0,
              rows: slice = slice(None)) -> Batch:
  """Right-pads a global batch to its bucket and returns `rows` of it.

  One example per row: segment_ids is 1 on its tokens and 0 on padding, so the same
  `segment_causal_mask` serves padded and packed batches.
  """
  length = bucket_length(max(len(e["tokens"]) for e in examples), buckets)
  mine = examples[rows]
  batch = _padded_layout([len(e["tokens"]) for e in mine], length)
  batch["tokens"] = _right_pad([e["tokens"] for e in mine], length, pad_id, np.int32)
  batch["loss_mask"] = _right_pad([e["loss_mask"] for e in mine], length, 0.0, np.float32)
  return batch


def trim_packed_batch(packed_rows: Sequence[Batch], buckets: Sequence[int],
                      rows: slice = slice(None)) -> Batch:
  """Stacks a global batch of packed rows, trimmed to the bucket of its fullest row."""
  used = max(int(r["input_mask"].sum()) for r in packed_rows)  # packing fills from the left
  length = bucket_length(used, buckets)
  mine = packed_rows[rows]
  return {k: np.stack([r[k][:length] for r in mine]) for k in mine[0]}


def pad_pair_batch(pairs: Sequence[Pair], buckets: Sequence[int], pad_id: int = 0,
                   rows: slice = slice(None)) -> Batch:
  """A batch of preference pairs for reward-model and DPO losses.

  Returns {"chosen": side, "rejected": side, "margin": float32 [b]}, where each side holds
  tokens/positions/segment_ids/input_mask/loss_mask [b, T] (the shared prompt, then that
  response; loss_mask on the response) and last_index [b], the index of the response's last
  token, where a reward head reads its score. Both sides share T (chosen on top of rejected
  is then one [2b, T] forward pass).
  """
  longest = max(len(p["prompt"]) + max(len(p["chosen"]), len(p["rejected"])) for p in pairs)
  length = bucket_length(longest, buckets)
  mine = pairs[rows]
  batch: Batch = {"margin": np.asarray([p["margin"] for p in mine], np.float32)}
  for side in ("chosen", "rejected"):
    seqs = [np.concatenate([p["prompt"], p[side]]) for p in mine]
    lengths = [len(s) for s in seqs]
    out = _padded_layout(lengths, length)
    out["tokens"] = _right_pad(seqs, length, pad_id, np.int32)
    masks = [np.concatenate([np.zeros(len(p["prompt"]), np.float32),
                             np.ones(len(p[side]), np.float32)]) for p in mine]
    out["loss_mask"] = _right_pad(masks, length, 0.0, np.float32)
    out["last_index"] = np.asarray(lengths, np.int32) - 1
    batch[side] = out
  return batch


def left_pad_prompts(prompts: Sequence[np.ndarray], pad_id: int = 0,
                     buckets: Sequence[int] | None = None) -> Batch:
  """Prompt ids left-padded for generation, so every row's next token lands in one column.

  Returns tokens [B, T] int32, input_mask [B, T] bool and positions [B, T] (0 on the first real
  token, as `alignment.model.masks.positions_from_mask` gives).
  """
  if not prompts:
    raise ValueError("no prompts to batch")
  longest = max(len(p) for p in prompts)
  length = bucket_length(longest, buckets) if buckets else longest
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  input_mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    if len(p):
      tokens[i, -len(p):] = p
      input_mask[i, -len(p):] = True
  positions = np.maximum(np.cumsum(input_mask, axis=1) - 1, 0).astype(np.int32)
  return {"tokens": tokens, "input_mask": input_mask, "positions": positions}


def shuffled_epoch(elements: Sequence[Any], seed: int, epoch: int,
                   shuffle: bool = True) -> grain.MapDataset:
  """Epoch `epoch` of the elements in grain's per-epoch shuffled order (same on every host)."""
  ds = grain.MapDataset.source(elements)
  if not shuffle:
    return ds
  n = len(elements)
  return ds.shuffle(seed).repeat()[epoch * n:(epoch + 1) * n]


# Open iterators, closed at exit: grain's prefetch threads still running while the interpreter
# shuts down can abort the process ("terminate called without an active exception").
_OPEN: weakref.WeakSet = weakref.WeakSet()
atexit.register(lambda: [it.close() for it in list(_OPEN)])


class EpochIterator:
  """Chains per-epoch grain iterators; its state is a small JSON-able dict.

  `make_epoch(epoch)` returns that epoch's grain dataset of batches. `get_state()` gives
  {"epoch": e, "grain": <grain iterator state within epoch e>}; `set_state` of that dict on a
  fresh iterator over the same data yields exactly the batches an uninterrupted run would.
  """

  def __init__(self, make_epoch: Callable[[int], grain.IterDataset],
               num_epochs: int | None = None):
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be positive or None (forever), got {num_epochs}")
    self._make_epoch = make_epoch
    self._num_epochs = num_epochs
    self._iter = None
    self._start(0)
    _OPEN.add(self)

  def _start(self, epoch: int, grain_state: dict | None = None) -> None:
    self.close()
    self._epoch = epoch
    self._iter = iter(self._make_epoch(epoch))
    if grain_state is not None:
      self._iter.set_state(grain_state)
    self._yielded_this_epoch = grain_state is not None  # a restored epoch was not empty

  def __iter__(self) -> EpochIterator:
    return self

  def close(self) -> None:
    """Stops grain's prefetch threads. Call it when done with an unfinished iterator: left to
    the garbage collector, grain may try to stop a thread from inside that same thread."""
    if self._iter is not None and hasattr(self._iter, "close"):
      self._iter.close()
    self._iter = None

  def __enter__(self) -> EpochIterator:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __next__(self) -> Batch:
    if self._iter is None:
      raise ValueError("the batch iterator was closed")
    while self._num_epochs is None or self._epoch < self._num_epochs:
      try:
        batch = next(self._iter)
      except StopIteration:
        if not self._yielded_this_epoch:
          raise ValueError(f"epoch {self._epoch} produced no batch: the dataset is too "
                           f"small to fill one global batch") from None
        self._start(self._epoch + 1)
        continue
      self._yielded_this_epoch = True
      return batch
    self.close()
    raise StopIteration

  @property
  def epoch(self) -> int:
    return self._epoch

  def get_state(self) -> dict[str, Any]:
    if self._iter is None:
      raise ValueError("the batch iterator was closed; take its state before closing it")
    return {"epoch": self._epoch, "grain": self._iter.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    missing = {"epoch", "grain"} - set(state)
    if missing:
      raise ValueError(f"iterator state is missing {sorted(missing)}; got keys {sorted(state)}")
    self._start(int(state["epoch"]), state["grain"])
