"""Records -> tokenized -> packed or padded -> this host's batches, resumable.

    batches = make_batches(records, tokenizer, GEMMA_CHAT, PipelineConfig(max_length=512,
                           batch_size=32, packing=True, shard_index=jax.process_index(),
                           shard_count=jax.process_count()))
    for batch in batches: ...                      # dicts of numpy arrays (see below)
    state = batches.get_state()                    # small dict, save it with the checkpoint
    batches.set_state(state)                       # resume exactly there

Instruction examples give SFT batches: tokens, positions, segment_ids [b, T] int32, loss_mask
[b, T] float32 (response tokens; see `alignment.data.tokenize` for the shift convention) and
input_mask [b, T] bool, with b = batch_size / shard_count and T a bucket length. Attention
mask: `alignment.model.masks.segment_causal_mask(segment_ids)`, for packed and padded rows
alike. Preference pairs give `pad_pair_batch` batches (never packed).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grain
import numpy as np

from alignment.data import batching, packing
from alignment.data import tokenize as tok
from alignment.data.records import InstructionExample, PreferencePair
from alignment.prompts.templates import PromptTemplate

if TYPE_CHECKING:
  from alignment.tokenizer.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What shapes the batches; `batch_size` is global (all hosts together)."""

  max_length: int = 512  # tokens per example; with packing, per row
  batch_size: int = 16
  packing: bool = False
  buckets: tuple[int, ...] = ()  # padded lengths to choose from; () -> powers of two
  seed: int = 0
  shuffle: bool = True
  shard_index: int = 0  # this host, e.g. jax.process_index()
  shard_count: int = 1  # e.g. jax.process_count()
  num_epochs: int | None = None  # None: repeat forever
  system: str = ""  # preamble put before every prompt (e.g. a safety system prompt)
  skip_long_prompts: bool = False  # drop and count examples whose prompt fills max_length
  # Background threads building batches (padded: per batch; packed: one packing thread).
  num_threads: int = 1
  prefetch: int = 8  # batches buffered ahead of the trainer

  def validated(self) -> PipelineConfig:
    if self.max_length < 2:
      raise ValueError(f"max_length must be at least 2 (BOS + one token), got "
                       f"{self.max_length}")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {self.batch_size}")
    buckets = self.buckets or batching.default_buckets(self.max_length)
    if max(buckets) < self.max_length:
      raise ValueError(f"largest bucket {max(buckets)} is below max_length "
                       f"{self.max_length}; full-length examples would not fit")
    batching.host_rows(self.batch_size, self.shard_index, self.shard_count)  # checks shards
    return dataclasses.replace(self, buckets=tuple(sorted(set(buckets))))


class Batches(batching.EpochIterator):
  """This host's batches; `stats` says what tokenization kept, cut and skipped."""

  def __init__(self, make_epoch, num_epochs: int | None, stats: tok.TokenizeStats,
               config: PipelineConfig):
    super().__init__(make_epoch, num_epochs)
    self.stats = stats
    self.config = config


def _read_options(config: PipelineConfig) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=config.num_threads,
                           prefetch_buffer_size=config.prefetch)


def _sft_epochs(examples: Sequence[tok.Example], config: PipelineConfig, pad_id: int):
  rows = batching.host_rows(config.batch_size, config.shard_index, config.shard_count)

  def make_epoch(epoch: int) -> grain.IterDataset:
    order = batching.shuffled_epoch(examples, config.seed, epoch, config.shuffle)
    if not config.packing:
      pad = functools.partial(batching.pad_batch, buckets=config.buckets, pad_id=pad_id,
                              rows=rows)
      return order.batch(config.batch_size, drop_remainder=True, batch_fn=pad
                         ).to_iter_dataset(_read_options(config))
    packed = packing.pack(order.to_iter_dataset(grain.ReadOptions(num_threads=0)),
                          config.max_length, rows=config.batch_size, pad_id=pad_id)
    trim = functools.partial(batching.trim_packed_batch, buckets=config.buckets, rows=rows)
    packed = packed.batch(config.batch_size, drop_remainder=True, batch_fn=trim)
    if config.num_threads > 0:
      packed = grain.experimental.ThreadPrefetchIterDataset(
          packed, prefetch_buffer_size=config.prefetch)
    return packed

  return make_epoch


def _pair_epochs(pairs: Sequence[tok.Pair], config: PipelineConfig, pad_id: int):
  rows = batching.host_rows(config.batch_size, config.shard_index, config.shard_count)
  pad = functools.partial(batching.pad_pair_batch, buckets=config.buckets, pad_id=pad_id,
                          rows=rows)

  def make_epoch(epoch: int) -> grain.IterDataset:
    order = batching.shuffled_epoch(pairs, config.seed, epoch, config.shuffle)
    return order.batch(config.batch_size, drop_remainder=True, batch_fn=pad
                       ).to_iter_dataset(_read_options(config))

  return make_epoch


def example_sft_batch(config: PipelineConfig) -> batching.Batch:
  """Zeros shaped like this host's SFT batches at the longest bucket (keys, dtypes, shapes).

  What compiling a step needs before any data is read; unlike a batch built from the first
  few examples, it exists however few rows packing folds them into.
  """
  config = config.validated()
  rows = batching.host_rows(config.batch_size, config.shard_index, config.shard_count)
  b = len(range(config.batch_size)[rows])
  shape = (b, max(config.buckets))
  return {"tokens": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32),
          "segment_ids": np.zeros(shape, np.int32), "loss_mask": np.zeros(shape, np.float32),
          "input_mask": np.zeros(shape, bool)}


def tokenize_records(records: Sequence[Any], tokenizer: Tokenizer,
                     template: PromptTemplate | None, config: PipelineConfig
                     ) -> tuple[list[dict[str, Any]], tok.TokenizeStats]:
  """Tokenizes all `InstructionExample`s or all `PreferencePair`s (template wraps prompts)."""
  records = list(records)
  if not records:
    raise ValueError("empty dataset: no records were given")
  kinds = {type(r).__name__ for r in records}
  if len(kinds) > 1:
    raise ValueError(f"records mix several types ({', '.join(sorted(kinds))}); build one "
                     f"pipeline per type")
  if isinstance(records[0], InstructionExample):
    if template is None:
      raise ValueError("instruction examples need a prompt template")
    return tok.tokenize_examples(records, template, tokenizer, config.max_length,
                                 config.system, config.skip_long_prompts)
  if isinstance(records[0], PreferencePair):
    return tok.tokenize_pairs(records, tokenizer, config.max_length, template,
                              config.skip_long_prompts)
  raise ValueError(f"cannot batch records of type {type(records[0]).__name__}; expected "
                   f"InstructionExample or PreferencePair")


def batch_tokenized(examples: Sequence[dict[str, Any]], config: PipelineConfig, pad_id: int,
                    stats: tok.TokenizeStats | None = None) -> Batches:
  """This host's resumable batches over already tokenized examples or pairs."""
  config = config.validated()
  if not examples:
    raise ValueError("empty dataset: no tokenized examples were given")
  pad_id = max(pad_id, 0)  # SentencePiece says -1 when it has no pad piece; padding is masked
  if "prompt" in examples[0]:
    if config.packing:
      raise ValueError("packing is for SFT examples; preference pairs are padded")
    make_epoch = _pair_epochs(examples, config, pad_id)
  else:
    make_epoch = _sft_epochs(examples, config, pad_id)
  if len(examples) < config.batch_size:
    raise ValueError(f"only {len(examples)} examples for a global batch of "
                     f"{config.batch_size}; no full batch can be formed")
  return Batches(make_epoch, config.num_epochs, stats or tok.TokenizeStats(), config)


def make_batches(records: Sequence[Any], tokenizer: Tokenizer,
                 template: PromptTemplate | None, config: PipelineConfig) -> Batches:
  """Tokenizes `records` once and returns this host's resumable batch iterator.

  Records are all `InstructionExample` (SFT batches) or all `PreferencePair` (pair batches;
  the template, if any, wraps each pair's prompt). Raises ValueError on an empty dataset, on
  fewer records than one global batch, on mixed record types and on packing pairs.
  """
  config, records = config.validated(), list(records)
  if config.packing and records and isinstance(records[0], PreferencePair):
    raise ValueError("packing is for SFT examples; preference pairs are padded")
  examples, stats = tokenize_records(records, tokenizer, template, config)
  return batch_tokenized(examples, config, tokenizer.pad_id, stats)
