"""Pieces every job shares: run directory, mesh, model + LoRA parameters, the trainer.
Each takes its config section and returns library objects (`alignment.training.trainer`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from alignment import lora as lora_lib
from alignment import sharding
from alignment.checkpoints.loading import check_dtype, load_model_sharded
from alignment.prompts import get_template
from alignment.prompts.templates import PromptTemplate
from alignment.rl.finetune import ExampleData, ExampleTrainer
from alignment.rl import generation as rl_generation
from alignment.sampling import Sampler, SamplingParams
from alignment.schema import from_section
from alignment.files import atomic
from alignment.training import distributed, run_identity, run_lock
from alignment.training.trainer import Trainable, Trainer, TrainerConfig, make_trainable


def run_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON data: saved in config.json and with every checkpoint, so a
  resumed run is checked against what it was."""
  return json.loads(config.to_json_best_effort())


MAX_LEARNING_RATE = 1e3  # far above any rate that trains; larger ones are typos


def check_learning_rates(config: ml_collections.ConfigDict) -> None:
  """Refuses a learning rate that is not finite, not > 0 or above MAX_LEARNING_RATE, naming
  the key, before any work starts (such a rate turns the parameters to NaN in one step)."""
  flat = run_identity.flatten(run_config(config))
  for key, value in flat.items():
    if key.split(".")[-1] == "learning_rate" and isinstance(value, (int, float)):
      if not (math.isfinite(value) and 0 < value <= MAX_LEARNING_RATE):
        raise ValueError(f"config.{key}={value}: a learning rate must be finite, > 0 and "
                         f"<= {MAX_LEARNING_RATE:g}")


# Counts a job divides by or loops up to: 0 used to surface as an optax message
# (train.steps) or as "cannot schedule new futures after interpreter shutdown" (eval.every).
POSITIVE_COUNTS = ("train.steps", "train.iterations", "train.grad_accum_steps",
                   "train.log_every", "train.batch_size", "eval.every", "checkpoint.every")


def check_counts(config: ml_collections.ConfigDict) -> None:
  """Refuses a count in POSITIVE_COUNTS (where the config has it) that is not an integer
  >= 1, and fewer train.steps than train.grad_accum_steps (no optimizer step), naming the
  key, before any work starts."""
  for key in POSITIVE_COUNTS:
    section, field = key.split(".")
    if section in config and isinstance(config[section], ml_collections.ConfigDict) and (
        field in config[section]):
      value = config[section][field]
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{key}={value!r}: must be an integer >= 1")
  train = config.get("train")
  if train is not None and "steps" in train and train.get("grad_accum_steps", 1) > train.steps:
    raise ValueError(f"config.train.steps={train.steps} is fewer than config.train."
                     f"grad_accum_steps={train.grad_accum_steps}: no optimizer step would run")


def start(config: ml_collections.ConfigDict, data_fingerprint: dict | None = None,
          data_file: str | None = None) -> tuple[pathlib.Path, jax.sharding.Mesh]:
  """Joins the process group (if configured), builds the mesh, creates the run directory.

  A workdir with checkpoints is checked first (`run_identity.check_resume`, against the data
  fingerprint saved in `data_file` too), so config.json is rewritten only for the same run;
  then the workdir's lock is taken (`run_lock`), so a second process on it stops before
  writing anything. Jobs wrap `run` in `run_lock.released_on_return` to let go of it.
  """
  check_learning_rates(config)
  check_counts(config)
  if "model" in config:
    check_dtype(config.model.get("dtype", "float32"))
  d = config.distributed
  distributed.initialize(distributed.DistributedConfig(
      initialize=d.initialize, coordinator_address=d.coordinator_address or None,
      num_processes=d.num_processes or None,
      process_id=None if d.process_id < 0 else d.process_id))
  mesh = sharding.make_mesh(from_section(sharding.MeshConfig, config.mesh, "config.mesh"))
  workdir = pathlib.Path(config.workdir)
  if distributed.is_primary():
    changes = run_identity.check_resume(workdir, run_config(config),
                                        config.get("resume", "same_run"), data_fingerprint,
                                        data_file)
    workdir.mkdir(parents=True, exist_ok=True)
    run_lock.hold(workdir)  # before any write; released when the job's `run` returns
    run_identity.record_resume(workdir, changes)
    atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
  return workdir, mesh


def lora_config(section: ml_collections.ConfigDict) -> lora_lib.LoraConfig | None:
  return from_section(lora_lib.LoraConfig, section, "config.lora") if section.enabled else None


def load_trainable(config: ml_collections.ConfigDict, mesh, rng: jax.Array) -> Trainable:
  """Loads the model named by `config.model` straight into `mesh`'s shards (each host reads
  only its slices) and makes it trainable per `config.lora`."""
  cfg, base, tokenizer = load_model_sharded(config.model, mesh)
  return make_trainable(cfg, base, tokenizer, lora_config(config.lora), mesh, rng)


def require_tokenizer(tokenizer: Any, model: ml_collections.ConfigDict | dict) -> Any:
  """The tokenizer, or a clear error when the model section's checkpoint has none."""
  if tokenizer is None:
    raise ValueError(f"config.model: checkpoint {model.get('checkpoint')!r} comes without a "
                     "tokenizer; set config.model.tokenizer to a SentencePiece .model file")
  return tokenizer


def template_or_none(name: str) -> PromptTemplate | None:
  """The named prompt template, or None for 'none' (the raw prompt)."""
  if name == "none":
    return None
  try:
    return get_template(name)
  except KeyError as e:
    raise ValueError(f"config.template: {e.args[0]} (or 'none')") from None


def sampling_config(config: ml_collections.ConfigDict) -> SamplingParams:
  """SamplingParams from a config's temperature/top_k/top_p, after checking those and
  max_new_tokens / batch_size (where the config has them) with errors naming the field."""
  try:
    sampling = from_section(SamplingParams, config)
  except ValueError as e:
    raise ValueError(f"config: {e}") from None
  for field in ("max_new_tokens", "batch_size"):
    if field in config and config[field] < 1:
      raise ValueError(f"config.{field}: must be >= 1 (got {config[field]})")
  return sampling


def make_sample_fn(cfg, params, tokenizer, section: ml_collections.ConfigDict
                   ) -> rl_generation.SampleFn:
  """The policy's sampler over formatted inputs, drawing as `section` (a job's `sampling`)
  says; rejection sampling and distillation use it (and tests watch it as a seam)."""
  return rl_generation.sampler_fn(Sampler(cfg, params, tokenizer), section.max_new_tokens,
                                  sampling_config(section))


@dataclasses.dataclass
class Prepared:
  """What every training job starts from (see `prepare`)."""

  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  trainable: Trainable
  rngs: list[jax.Array]  # independent keys from `config.seed`, after the one that made LoRA
  template: PromptTemplate | None  # `config.data.template`, for jobs whose data has one


def prepare(config: ml_collections.ConfigDict, job: str, num_rngs: int = 1,
            require_tokenizer: bool = True, data_fingerprint: dict | None = None,
            data_file: str | None = None) -> Prepared:
  """The shared start of a training job: process group, mesh and run directory (see `start`
  for the data fingerprint), keys split from `config.seed`, the model with adapters, a
  tokenizer check and the prompt template."""
  workdir, mesh = start(config, data_fingerprint, data_file)
  init_rng, *rngs = jax.random.split(jax.random.key(config.seed), num_rngs + 1)
  trainable = load_trainable(config, mesh, init_rng)
  if require_tokenizer and trainable.tokenizer is None:
    raise ValueError(f"{job} needs a tokenizer: the checkpoint has none; set model.tokenizer")
  name = config.get("data", {}).get("template")
  return Prepared(workdir, mesh, trainable, rngs, get_template(name) if name else None)


def trainer_config(config: ml_collections.ConfigDict, steps: int | None = None
                   ) -> TrainerConfig:
  return TrainerConfig.from_sections(config.train, config.checkpoint, steps)


def make_trainer(config: ml_collections.ConfigDict, trainable: Trainable, loss_fn: Callable,
                 rng: jax.Array, mesh, steps: int | None = None) -> Trainer:
  """The run's `Trainer` under `config.train` / `config.checkpoint`; checkpoints carry the
  whole config (a resumed run is checked against it)."""
  return Trainer(trainable, loss_fn, trainer_config(config, steps), mesh, rng,
                 run_config=run_config(config))


def example_trainer(config: ml_collections.ConfigDict, trainable: Trainable, mesh,
                    template: PromptTemplate, rng: jax.Array, total_steps: int
                    ) -> ExampleTrainer:
  """The SFT trainer of a job that trains on its own samples, `total_steps` over all rounds."""
  data = from_section(ExampleData, config.data, "config.data",
                      batch_size=config.train.batch_size, seed=config.seed)
  return ExampleTrainer(trainable, trainer_config(config, total_steps), data, mesh, template,
                        rng, run_config=run_config(config))


def save_lora(workdir: pathlib.Path, params: dict[str, Any],
              lcfg: lora_lib.LoraConfig | None) -> dict[str, str]:
  """Writes a LoRA run's adapters to workdir/adapters.npz: {"adapters": path}, or {}."""
  if lcfg is None:
    return {}
  path = workdir / "adapters.npz"
  lora_lib.save_adapters(path, jax.device_get(params["lora"]), lcfg)
  return {"adapters": str(path)}


def data_dir(config: ml_collections.ConfigDict) -> str | None:
  return config.get("data_dir") or None
