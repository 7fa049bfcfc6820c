"""Batching and the full pipeline: buckets, shuffling, host shards, resuming, errors."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from alignment.data import batching, sources
from alignment.data import tokenize as tok
from alignment.data.pipeline import PipelineConfig, make_batches
from alignment.data.records import InstructionExample, PreferencePair
from alignment.prompts.templates import ALPACA, GEMMA_CHAT
from tiny_sentencepiece import train_tiny_tokenizer

SFT_KEYS = {"tokens", "positions", "segment_ids", "loss_mask", "input_mask"}


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
  return train_tiny_tokenizer(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def records():
  """100 distinct instruction examples of uneven lengths (some longer than max_length)."""
  rng = np.random.default_rng(0)
  words = ("eat well sleep enough move every day the three primary colors are red blue and "
           "yellow an atom has a nucleus reduce air pollution").split()
  text = lambda lo, hi: " ".join(rng.choice(words, rng.integers(lo, hi)))
  return [InstructionExample(f"Task {i}: {text(2, 12)}", text(1, 70),
                             input=text(1, 8) if i % 3 == 0 else "", source="synthetic")
          for i in range(100)]


@pytest.fixture(scope="module")
def pairs():
  return sources.load("hh_harmless")[:48]


def _take(it, n):
  return list(itertools.islice(it, n))


def _run(*args, steps=None):
  """The first `steps` batches (all, if None) of a fresh pipeline, closed afterwards."""
  with make_batches(*args) as batches:
    return list(itertools.islice(batches, steps))


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], dict):
      _assert_same(a[k], b[k])
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _row_keys(batch):
  """Each example (padded row) identified by its real tokens."""
  return [row[m].tobytes() for row, m in zip(batch["tokens"], batch["input_mask"])]


def test_bucket_length_and_padded_layout():
  assert batching.bucket_length(5, (8, 16, 32)) == 8
  assert batching.bucket_length(16, (32, 8, 16)) == 16
  assert batching.default_buckets(300) == (64, 128, 256, 300)
  with pytest.raises(ValueError, match="33 tokens is longer than the largest bucket 32"):
    batching.bucket_length(33, (8, 16, 32))
  examples = [{"tokens": np.arange(3, 3 + n, dtype=np.int32),
               "loss_mask": np.r_[np.zeros(2), np.ones(n - 2)].astype(np.float32)}
              for n in (5, 9, 3, 7)]
  batch = batching.pad_batch(examples, buckets=(8, 16, 32), pad_id=0, rows=slice(2, 4))
  assert batch.keys() == SFT_KEYS
  assert batch["tokens"].shape == (2, 16)  # bucket of the global batch's longest (9), not 7
  assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
  np.testing.assert_array_equal(batch["tokens"][1], np.r_[np.arange(3, 10), np.zeros(9)])
  np.testing.assert_array_equal(batch["positions"][1], np.r_[np.arange(7), np.zeros(9)])
  np.testing.assert_array_equal(batch["segment_ids"][0], np.r_[np.ones(3), np.zeros(13)])
  np.testing.assert_array_equal(batch["loss_mask"][0], np.r_[0, 0, 1, np.zeros(13)])
  np.testing.assert_array_equal(batch["input_mask"], batch["segment_ids"] == 1)


def test_shuffle_is_deterministic_and_reshuffles_each_epoch(tiny_tokenizer, records):
  config = PipelineConfig(max_length=256, batch_size=8, seed=3, num_epochs=2)
  per_epoch = len(records) // 8
  run = lambda c: _run(records, tiny_tokenizer, ALPACA, c, steps=2 * per_epoch)
  first, again = run(config), run(config)
  for a, b in zip(first, again, strict=True):
    _assert_same(a, b)
  other_seed = run(dataclasses.replace(config, seed=4))
  assert _row_keys(other_seed[0]) != _row_keys(first[0])
  epochs = [sum((_row_keys(b) for b in first[e * per_epoch:(e + 1) * per_epoch]), [])
            for e in range(2)]
  for rows in epochs:
    assert len(set(rows)) == len(rows) == per_epoch * 8  # no example twice within an epoch
  assert epochs[0] != epochs[1]  # a new order every epoch
  unshuffled = _run(records, tiny_tokenizer, ALPACA, dataclasses.replace(config, shuffle=False),
                    steps=1)[0]
  expected, _ = tok.tokenize_examples(records[:8], ALPACA, tiny_tokenizer, 256)
  assert _row_keys(unshuffled) == [e["tokens"].tobytes() for e in expected]
  # The iterator stops after num_epochs.
  assert len(_run(records, tiny_tokenizer, ALPACA, config)) == 2 * per_epoch


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_host_shards_partition_the_global_batch(tiny_tokenizer, records, packing):
  config = PipelineConfig(max_length=192, batch_size=8, packing=packing, seed=1,
                          buckets=(64, 128, 192), skip_long_prompts=True)
  steps = 14  # crosses an epoch boundary
  full = _run(records, tiny_tokenizer, GEMMA_CHAT, config, steps=steps)
  for count in (2, 4):
    hosts = [_run(records, tiny_tokenizer, GEMMA_CHAT,
                  dataclasses.replace(config, shard_index=i, shard_count=count), steps=steps)
             for i in range(count)]
    for step, global_batch in enumerate(full):
      parts = [h[step] for h in hosts]
      assert all(p["tokens"].shape == (8 // count, global_batch["tokens"].shape[1])
                 for p in parts)
      _assert_same({k: np.concatenate([p[k] for p in parts]) for k in global_batch},
                   global_batch)
  if packing:  # packed rows are fuller than padded ones and trimmed to a bucket
    assert all(b["segment_ids"].max() > 1 for b in full)
    assert {b["tokens"].shape[1] for b in full} <= {64, 128, 192}


@pytest.mark.parametrize("kind", ["padded", "packed", "pairs"])
def test_resume_from_state_gives_identical_batches(tiny_tokenizer, records, pairs, kind):
  if kind == "pairs":
    data, template = pairs, None
    config = PipelineConfig(max_length=384, batch_size=8, skip_long_prompts=True, seed=5)
  else:
    data, template = records, ALPACA
    config = PipelineConfig(max_length=192, batch_size=8, packing=kind == "packed",
                            skip_long_prompts=True, seed=5, shard_index=1, shard_count=2)
  with make_batches(data, tiny_tokenizer, template, config) as batches:
    uninterrupted = _take(batches, 20)
    assert batches.epoch >= 1  # the run crosses at least one epoch boundary
  for split in (3, 13):
    with make_batches(data, tiny_tokenizer, template, config) as batches:
      _take(batches, split)
      state = json.loads(json.dumps(batches.get_state()))  # survives a checkpoint round trip
    with make_batches(data, tiny_tokenizer, template, config) as resumed:
      resumed.set_state(state)
      assert resumed.epoch == state["epoch"]
      for a, b in zip(_take(resumed, 20 - split), uninterrupted[split:], strict=True):
        _assert_same(a, b)
      with pytest.raises(ValueError, match=r"missing \['grain'\]"):
        resumed.set_state({"epoch": 0})
  with pytest.raises(ValueError, match="closed"):
    next(resumed)


def test_pair_pipeline_batches(tiny_tokenizer, pairs):
  config = PipelineConfig(max_length=384, batch_size=4, skip_long_prompts=True)
  with make_batches(pairs, tiny_tokenizer, None, config) as batches:
    batch = next(batches)
  assert set(batch) == {"chosen", "rejected", "margin"} and batch["margin"].shape == (4,)
  for side in ("chosen", "rejected"):
    b = batch[side]
    assert b.keys() == SFT_KEYS | {"last_index"}
    last = b["tokens"][np.arange(4), b["last_index"]]
    np.testing.assert_array_equal(b["last_index"], b["input_mask"].sum(1) - 1)
    # Each response ends in EOS unless it was cut to fill max_length exactly.
    assert ((last == tiny_tokenizer.eos_id) | (b["last_index"] == 383)).all()
  assert batches.stats.examples + batches.stats.skipped == len(pairs)


def test_pipeline_errors(tiny_tokenizer, records):
  config = PipelineConfig(max_length=256, batch_size=4)
  with pytest.raises(ValueError, match="empty dataset"):
    make_batches([], tiny_tokenizer, ALPACA, config)
  with pytest.raises(ValueError, match="only 3 examples for a global batch of 4"):
    make_batches(records[:3], tiny_tokenizer, ALPACA, config)
  empty_output = records[:4] + [InstructionExample("Say nothing.", "", source="seed_tasks")]
  with pytest.raises(ValueError, match=r"record 4 .*empty output"):
    make_batches(empty_output, tiny_tokenizer, ALPACA, config)
  with pytest.raises(tok.PromptTooLongError, match="max_length is 16"):
    make_batches(records, tiny_tokenizer, ALPACA, dataclasses.replace(config, max_length=16))
  with pytest.raises(ValueError, match="mix several types"):
    make_batches(records[:4] + [PreferencePair("a", "b", "c")], tiny_tokenizer, ALPACA, config)
  with pytest.raises(ValueError, match="not divisible by the 3 hosts"):
    make_batches(records, tiny_tokenizer, ALPACA, dataclasses.replace(config, shard_count=3))
  with pytest.raises(ValueError, match="shard_index must be in"):
    make_batches(records, tiny_tokenizer, ALPACA, dataclasses.replace(config, shard_index=1))
  with pytest.raises(ValueError, match="largest bucket 128 is below max_length 256"):
    make_batches(records, tiny_tokenizer, ALPACA, dataclasses.replace(config, buckets=(128,)))
  with pytest.raises(ValueError, match="packing is for SFT"):
    make_batches([PreferencePair("a", "b", "c")] * 4, tiny_tokenizer, None,
                 dataclasses.replace(config, packing=True))
  with pytest.raises(ValueError, match="need a prompt template"):
    make_batches(records, tiny_tokenizer, None, config)
