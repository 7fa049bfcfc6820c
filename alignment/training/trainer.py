"""One trainer for every job that minimises a loss over batches (SFT, reward models, DPO,
rejection-sampling and distillation rounds).

`Trainable` is what is optimised (decoder, adapters, extra heads, their shardings, which
parts are frozen); `Trainer` owns the optimizer, the train state, the jitted step and the
checkpointer settings, and `fit` runs the shared loop (`loop.train`: resume from the latest
good checkpoint, NaN guard, log and save cadence, hooks). Jobs build a `Trainer` and call
`fit`; nothing here reads a job's config.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

from alignment import lora as lora_lib
from alignment import sharding
from alignment.model.config import ModelConfig
from alignment.schema import from_section
from alignment.training import checkpointing, distributed, loop, optimizer
from alignment.training import step as step_lib
from alignment.training import train_state as train_state_lib


@dataclasses.dataclass
class Trainable:
  """The parameters a job optimises: {"base": decoder, "lora": adapters or {}} (+ extras).

  With LoRA the base is frozen (no optimizer state, not checkpointed); otherwise everything
  trains.
  """

  model_config: ModelConfig
  params: dict[str, Any]
  lora: lora_lib.LoraConfig | None
  tokenizer: Any
  frozen: tuple[str, ...]
  shardings: dict[str, Any]


def make_trainable(cfg: ModelConfig, base: Any, tokenizer: Any,
                   lcfg: lora_lib.LoraConfig | None, mesh, rng: jax.Array) -> Trainable:
  """A decoder with adapters (if `lcfg`), placed on the mesh by the logical-axis rules."""
  params: dict[str, Any] = {"base": base, "lora": {}}
  shardings: dict[str, Any] = {"base": sharding.param_shardings(cfg, mesh), "lora": {}}
  if lcfg is not None:
    params["lora"] = lora_lib.init_adapters(cfg, lcfg, rng)
    shardings["lora"] = sharding.logical_to_shardings(
        lora_lib.adapter_logical_axes(cfg, lcfg), jax.eval_shape(lambda: params["lora"]), mesh)
  frozen = ("^base/",) if lcfg is not None else ()
  return Trainable(cfg, params, lcfg, tokenizer, frozen, shardings)


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """How to optimise and when to log and save (a job's `train` and `checkpoint` sections)."""

  steps: int
  learning_rate: float
  schedule: str = "cosine"
  warmup_steps: int = 0
  weight_decay: float = 0.0
  max_grad_norm: float | None = 1.0
  grad_accum_steps: int = 1
  log_every: int = 10
  progress_bar: bool = True
  checkpoint_every: int = 200
  checkpoint_keep: int = 2
  async_save: bool = True

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"train.steps={self.steps}: a run needs at least one step")
    if self.grad_accum_steps < 1:
      raise ValueError(f"train.grad_accum_steps={self.grad_accum_steps} must be >= 1")

  @classmethod
  def from_sections(cls, train: Any, checkpoint: Any, steps: int | None = None
                    ) -> TrainerConfig:
    """From a config's `train` and `checkpoint` sections (any mapping with those keys)."""
    return from_section(cls, train, "config.train",
                        steps=train["steps"] if steps is None else steps,
                        max_grad_norm=train["max_grad_norm"] or None,
                        checkpoint_every=checkpoint["every"], checkpoint_keep=checkpoint["keep"],
                        async_save=checkpoint["async_save"])

  def optimizer(self, frozen: tuple[str, ...]) -> optimizer.OptimizerConfig:
    updates = self.steps // self.grad_accum_steps
    return optimizer.OptimizerConfig(
        learning_rate=self.learning_rate, schedule=self.schedule,
        # Warmup must leave at least one decay step (optax's cosine needs one).
        warmup_steps=min(self.warmup_steps, max(updates - 1, 0)), total_steps=updates,
        weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
        grad_accum_steps=self.grad_accum_steps, frozen=frozen)


def make_checkpointer(trainable: Trainable, directory: str | pathlib.Path, every: int,
                      keep: int, async_save: bool = True,
                      run_config: dict[str, Any] | None = None) -> checkpointing.Checkpointer:
  """Checkpoints under `directory`/checkpoints; a LoRA run's frozen base is not written (the
  job reloads it)."""
  skip = ("base",) if trainable.lora is not None else ()
  return checkpointing.Checkpointer(
      checkpointing.CheckpointConfig(str(pathlib.Path(directory) / "checkpoints"),
                                     save_every=every, max_to_keep=keep,
                                     async_save=async_save, skip_params=skip),
      run_config=run_config)


class Trainer:
  """The train state of one run and the compiled step of its loss; `fit` trains it."""

  def __init__(self, trainable: Trainable, loss_fn: Callable, config: TrainerConfig, mesh,
               rng: jax.Array, run_config: dict[str, Any] | None = None):
    self.trainable, self.loss_fn, self.config, self.mesh = trainable, loss_fn, config, mesh
    self.run_config = run_config  # saved with each checkpoint (what run it belongs to)
    self.opt_cfg = config.optimizer(trainable.frozen)
    self.tx = optimizer.make_optimizer(self.opt_cfg)
    self.state = train_state_lib.train_state_from_params(trainable.params, self.tx, rng, mesh,
                                                         trainable.shardings)
    self._step: Callable | None = None

  def compile(self, example_batch: Any) -> Callable:
    """The jitted step (built once; `example_batch`, this process's rows of a batch, fixes
    the shardings of the global batch)."""
    if self._step is None:
      dtype = self.trainable.model_config.dtype
      self._step = step_lib.jit_train_step(
          step_lib.make_train_step(self.loss_fn, self.tx, None if dtype == "float32" else dtype),
          train_state_lib.state_shardings_of(self.state),
          sharding.batch_shardings(self.mesh, distributed.global_shapes(example_batch)),
          sharding.replicated(self.mesh))
    return self._step

  def checkpointer(self, directory: str | pathlib.Path) -> checkpointing.Checkpointer:
    c = self.config
    return make_checkpointer(self.trainable, directory, c.checkpoint_every, c.checkpoint_keep,
                             c.async_save, self.run_config)

  def learning_rate(self, step: int) -> float:
    return optimizer.learning_rate_at(self.opt_cfg, step)

  def restore_finished(self, directory: str | pathlib.Path, num_steps: int) -> bool:
    """Whether `directory` holds the checkpoint of step `num_steps`; if so it is restored."""
    with self.checkpointer(directory) as ckpt:
      if ckpt.latest_step() != num_steps:
        return False
      restored = ckpt.restore_latest(checkpointing.abstract_like(self.state),
                                     skipped_from=self.state)
    self.state = restored.state
    return True

  def fit(self, batches: Iterator, example_batch: Any, directory: str | pathlib.Path,
          num_steps: int | None = None, hooks: Sequence[loop.Hook] = (),
          evaluate: Callable[[int, Any], Any] | None = None, evaluate_every: int = 0,
          before: Callable[[checkpointing.Checkpointer], None] | None = None
          ) -> loop.TrainResult:
    """Trains up to global step `num_steps` (default: the config's), resuming from the
    latest good checkpoint in `directory`. `evaluate(step, state)` runs every
    `evaluate_every` steps (0: never during training) and once more at the end unless the
    last step was just evaluated, so a run always ends measured. `before(ckpt)` runs once the
    checkpointer is open (e.g. an evaluation at step 0 of a fresh run)."""
    train_step = self.compile(example_batch)
    evaluated: list[int] = []
    all_hooks = list(hooks)
    if evaluate is not None and evaluate_every > 0:
      def hook(step: int, state) -> Any:
        evaluated.append(step)
        return evaluate(step, state)
      all_hooks.append(loop.Hook(evaluate_every, hook))
    steps = self.config.steps if num_steps is None else num_steps
    with self.checkpointer(directory) as ckpt:
      if before is not None:
        before(ckpt)
      result = loop.train(
          loop.LoopConfig(num_steps=steps, log_every=self.config.log_every,
                          output_dir=str(directory), progress_bar=self.config.progress_bar),
          self.state, train_step, batches, ckpt, mesh=self.mesh,
          learning_rate_fn=self.learning_rate, hooks=all_hooks)
    self.state = result.state
    if evaluate is not None and (not evaluated or evaluated[-1] != int(result.state.step)):
      evaluate(int(result.state.step), result.state)
    return result
