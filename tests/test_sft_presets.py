"""The SFT mixture's invariants on the real data: empty outputs dropped, held-out examples
independent of K, example batches sized to the host's rows. That every SFT preset (like every
preset of every job) builds its first batch and lowers its step is tests/test_presets_start.py.
"""

import numpy as np

from alignment.data import mixtures, pipeline
from alignment.jobs import sft
from configs import sft as sft_config


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
