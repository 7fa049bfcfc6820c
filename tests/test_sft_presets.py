"""Every SFT preset builds its mixture from the real data and its first batch at its shapes.

A preset that cannot start (an empty Alpaca output in its sample, a compile-time example that
packing folds into too few rows) fails here instead of minutes into a run. No training: the
mixture, the tokenizer pipeline and the first batch only, with the embedded Gemma 3 tokenizer
standing in for the 2B/7B checkpoints' own (the shapes do not depend on it).
"""

import functools

import numpy as np
import pytest

from alignment.checkpoints.embedded import embedded_gguf_path
from alignment.data import mixtures, pipeline
from alignment.jobs import sft
from alignment.prompts.templates import get_template
from alignment.checkpoints.gguf_tokenizer import tokenizer_from_gguf
from alignment.tokenizer.tokenizer import Tokenizer
from configs import sft as sft_config

PRESETS = ("paper_270m", "gemma_2b", "gemma_7b", "demo", "laptop", "tiny")


@functools.lru_cache(maxsize=1)
def embedded_tokenizer() -> Tokenizer:
  return tokenizer_from_gguf(embedded_gguf_path())


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_its_first_batch(preset, data_dir):
  config = sft_config.get_config(preset)
  config.data_dir = str(data_dir)
  if preset == "paper_270m":
    config.data.num_safety = 300  # the paper's recipe at one of its K
  train, held_out, report = sft.build_data(config)
  d = config.data
  assert report["num_base"] == d.num_base + d.eval_examples
  assert len(held_out) == d.eval_examples and len(train) == d.num_base + report["num_safety"]
  assert all(ex.output.strip() for ex in train + held_out)

  pipe = pipeline.PipelineConfig(max_length=d.max_length, batch_size=config.train.batch_size,
                                 packing=d.packing, seed=config.seed, skip_long_prompts=True)
  example = pipeline.example_sft_batch(pipe)
  with pipeline.make_batches(train, embedded_tokenizer(), get_template(d.template),
                             pipe) as batches:
    first = next(batches)
  assert set(first) == set(example)
  for key, value in first.items():
    assert value.dtype == example[key].dtype, key
    assert value.shape[0] == example[key].shape[0] == config.train.batch_size, key
    assert value.shape[1] <= example[key].shape[1] == d.max_length, key
  assert first["loss_mask"].sum() > 0


def test_empty_outputs_are_dropped_and_counted(data_dir):
  # Alpaca holds 28 records with an empty output; the mixture never samples them.
  examples, report = mixtures.build_mixture(
      mixtures.MixtureConfig(num_base=None, num_safety=0), data_dir)
  steps = [h for h in report.hygiene if h["step"] == "empty_output"]
  assert steps == [{"pool": "base", "step": "empty_output", "before": 52_002, "after": 51_974,
                    "removed": 28}]
  assert len(examples) == 51_974 and all(ex.output.strip() for ex in examples)


def test_held_out_examples_do_not_depend_on_k(data_dir):
  config = sft_config.get_config("laptop")
  config.data_dir = str(data_dir)
  held = []
  for k in (0, 90):
    config.data.num_safety = k
    _, held_out, _ = sft.build_data(config)
    held.append([ex.instruction for ex in held_out])
  assert held[0] == held[1]


def test_example_batch_matches_host_rows():
  pipe = pipeline.PipelineConfig(max_length=300, batch_size=8, shard_index=1, shard_count=2)
  example = pipeline.example_sft_batch(pipe)
  assert example["tokens"].shape == (4, 300)  # this host's rows, the largest bucket
  assert example["input_mask"].dtype == np.bool_
