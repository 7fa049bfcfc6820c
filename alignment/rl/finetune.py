"""Supervised steps on examples a job generated itself (rejection sampling, distillation).

The SFT loss (`losses.sft_loss_fn`) and data pipeline (response-only loss, packing) on the
shared `Trainer`. One optimizer and one train state carry across rounds; round r trains up
to step (r + 1) * steps_per_round and keeps its checkpoints in its own directory, so a
restarted job finds finished rounds there.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax

from alignment import lora as lora_lib
from alignment.data import pipeline
from alignment.data.records import InstructionExample
from alignment.prompts.templates import PromptTemplate
from alignment.training import losses
from alignment.training.trainer import Trainable, Trainer, TrainerConfig


@dataclasses.dataclass(frozen=True)
class ExampleData:
  """How generated examples become SFT batches (a job's `data` section)."""

  max_length: int
  batch_size: int
  packing: bool
  seed: int


class ExampleTrainer:
  """A `Trainer` of the SFT loss whose `train(examples, ...)` runs one round."""

  def __init__(self, trainable: Trainable, config: TrainerConfig, data: ExampleData, mesh,
               template: PromptTemplate, rng: jax.Array,
               run_config: dict[str, Any] | None = None, unmerged: bool = False):
    """`unmerged`: LoRA as low-rank paths beside the frozen weights (`losses.sft_loss_fn`)."""
    self.data, self.template = data, template
    self.lora, self.tokenizer = trainable.lora, trainable.tokenizer
    loss_fn = losses.sft_loss_fn(trainable.model_config, trainable.lora, unmerged)
    self.trainer = Trainer(trainable, loss_fn, config, mesh, rng, run_config)
    self._merge = jax.jit(lambda p: lora_lib.decoder_params(p, self.lora))

  @property
  def state(self):
    return self.trainer.state

  def policy_params(self) -> Any:
    """The decoder parameters the current policy samples with (adapters merged)."""
    return self._merge(self.trainer.state.params)

  def pipeline_config(self) -> pipeline.PipelineConfig:
    return pipeline.PipelineConfig(
        max_length=self.data.max_length, batch_size=self.data.batch_size,
        packing=self.data.packing, seed=self.data.seed, shard_index=jax.process_index(),
        shard_count=jax.process_count(), skip_long_prompts=True)

  def finished(self, directory: pathlib.Path, num_steps: int) -> bool:
    """Whether `directory` holds the checkpoint of step `num_steps` (then it is restored)."""
    return self.trainer.restore_finished(directory, num_steps)

  def train(self, examples: list[InstructionExample], num_steps: int,
            directory: pathlib.Path) -> dict[str, Any]:
    """Trains on `examples` up to global step `num_steps`; returns the loop's summary."""
    if len(examples) < self.data.batch_size:
      raise ValueError(f"only {len(examples)} training examples for a batch of "
                       f"{self.data.batch_size}; generate more prompts or lower "
                       "train.batch_size")
    pipe = self.pipeline_config()
    batches = pipeline.make_batches(examples, self.tokenizer, self.template, pipe)
    with batches:
      result = self.trainer.fit(batches, pipeline.example_sft_batch(pipe), directory,
                                num_steps)
    summary = dict(result.summary)
    if batches.stats is not None:
      summary["tokenize"] = dataclasses.asdict(batches.stats)
    return summary
