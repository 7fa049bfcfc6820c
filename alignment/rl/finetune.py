"""Supervised steps on examples a job generated itself (rejection sampling, distillation).

The SFT job's pieces, reused as they are: its loss (`sft.make_loss_fn`), the data pipeline
(response-only loss, packing), the shared loop and checkpointer. One optimizer and one train
state carry across rounds; round r trains up to step (r + 1) * steps_per_round and keeps its
checkpoints in its own directory, so a restarted job finds finished rounds there.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections

from alignment import sharding
from alignment.data import pipeline
from alignment.data.records import InstructionExample
from alignment.jobs import common, sft
from alignment.prompts.templates import PromptTemplate
from alignment.training import checkpointing, loop, optimizer
from alignment.training import step as step_lib
from alignment.training import train_state as train_state_lib


class ExampleTrainer:
  """Holds the train state and the jitted SFT step; `train(examples, ...)` runs one round."""

  def __init__(self, config: ml_collections.ConfigDict, trainable: common.Trainable, mesh,
               template: PromptTemplate, rng: jax.Array, total_steps: int):
    if total_steps < 1:
      raise ValueError(f"total SFT steps must be >= 1, got {total_steps}")
    self.config, self.mesh, self.template = config, mesh, template
    self.trainable = trainable  # which parameters a checkpoint leaves out (a LoRA run's base)
    self.cfg, self.lora, self.tokenizer = (trainable.model_config, trainable.lora,
                                           trainable.tokenizer)
    train = ml_collections.ConfigDict(config.train.to_dict())
    train.steps = total_steps
    self.opt_cfg = common.optimizer_config(train, trainable.frozen)
    self.tx = optimizer.make_optimizer(self.opt_cfg)
    self.state = common.new_state(trainable, self.tx, rng, mesh)
    self._step = None
    self._merge = jax.jit(lambda p: common.merged_params(p, self.lora))

  def policy_params(self) -> Any:
    """The decoder parameters the current policy samples with (adapters merged)."""
    return self._merge(self.state.params)

  def pipeline_config(self) -> pipeline.PipelineConfig:
    d, t = self.config.data, self.config.train
    return pipeline.PipelineConfig(
        max_length=d.max_length, batch_size=t.batch_size, packing=d.packing,
        seed=self.config.seed, shard_index=jax.process_index(),
        shard_count=jax.process_count(), skip_long_prompts=True)

  def _train_step(self, example_batch):
    if self._step is None:
      compute_dtype = None if self.cfg.dtype == "float32" else self.cfg.dtype
      self._step = step_lib.jit_train_step(
          step_lib.make_train_step(sft.make_loss_fn(self.cfg, self.lora), self.tx,
                                   compute_dtype),
          train_state_lib.state_shardings_of(self.state),
          sharding.batch_shardings(self.mesh, example_batch), sharding.replicated(self.mesh))
    return self._step

  def finished(self, directory: pathlib.Path, num_steps: int) -> bool:
    """Whether `directory` holds the checkpoint of step `num_steps` (then it is restored)."""
    with common.checkpointer(self.config, directory, self.trainable) as ckpt:
      if ckpt.latest_step() != num_steps:
        return False
      restored = ckpt.restore_latest(checkpointing.abstract_like(self.state),
                                     skipped_from=self.state)
    self.state = restored.state
    return True

  def train(self, examples: list[InstructionExample], num_steps: int,
            directory: pathlib.Path) -> dict[str, Any]:
    """Trains on `examples` up to global step `num_steps`; returns the loop's summary."""
    if len(examples) < self.config.train.batch_size:
      raise ValueError(f"only {len(examples)} training examples for a batch of "
                       f"{self.config.train.batch_size}; generate more prompts or lower "
                       "train.batch_size")
    pipe = self.pipeline_config()
    batches = pipeline.make_batches(examples, self.tokenizer, self.template, pipe)
    train_step = self._train_step(pipeline.example_sft_batch(pipe))
    with common.checkpointer(self.config, directory, self.trainable) as ckpt, batches:
      result = loop.train(
          common.loop_config(self.config.train, directory, num_steps), self.state, train_step,
          batches, ckpt, mesh=self.mesh,
          learning_rate_fn=lambda s: optimizer.learning_rate_at(self.opt_cfg, s))
    self.state = result.state
    summary = dict(result.summary)
    if batches.stats is not None:
      summary["tokenize"] = dataclasses.asdict(batches.stats)
    return summary
