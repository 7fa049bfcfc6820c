"""The job-level glue every job shares: config sections -> library objects (run start,
mesh, model + LoRA parameters, the trainer). The logic lives in the library
(`training.run_start`, `sampling.sample_config`, `training.trainer`); this reads the config.
"""

from __future__ import annotations

import dataclasses
import json
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
from alignment.sampling import Sampler, sample_config
from alignment.schema import from_section
from alignment.training import distributed, run_start
from alignment.training.trainer import Trainable, Trainer, TrainerConfig, make_trainable


def run_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON data: saved in config.json and with every checkpoint, so a
  resumed run is checked against what it was."""
  return json.loads(config.to_json_best_effort())


def start(config: ml_collections.ConfigDict, data_fingerprint: dict | None = None,
          data_file: str | None = None) -> tuple[pathlib.Path, jax.sharding.Mesh]:
  """Checks the config's numbers (`run_start`), joins the process group (if configured),
  builds the mesh and opens the run directory (`run_start.open_run_dir`: resume check, lock,
  config.json; the data fingerprint saved in `data_file` too). Jobs wrap `run` in
  `run_lock.released_on_return` to let go of the lock."""
  plain = run_config(config)
  run_start.check_learning_rates(plain)
  run_start.check_counts(plain)
  if "model" in config:
    check_dtype(config.model.get("dtype", "float32"))
  distributed.initialize(from_section(distributed.DistributedConfig, config.distributed,
                                      "config.distributed"))
  mesh = sharding.make_mesh(from_section(sharding.MeshConfig, config.mesh, "config.mesh"))
  workdir = pathlib.Path(config.workdir)
  if distributed.is_primary():
    run_start.open_run_dir(workdir, plain, config.to_json_best_effort(indent=2),
                           config.get("resume", "same_run"), data_fingerprint, data_file)
  return workdir, mesh


def open_workdir(config: ml_collections.ConfigDict) -> pathlib.Path:
  """An evaluation's workdir, locked, with config.json (`run_start.open_workdir`)."""
  workdir = pathlib.Path(config.workdir)
  run_start.open_workdir(workdir, config.to_json_best_effort(indent=2))
  return workdir


def lora_config(section: ml_collections.ConfigDict) -> lora_lib.LoraConfig | None:
  return from_section(lora_lib.LoraConfig, section, "config.lora") if section.enabled else None


def load_trainable(config: ml_collections.ConfigDict, mesh, rng: jax.Array) -> Trainable:
  """Loads the model named by `config.model` straight into `mesh`'s shards (each host reads
  only its slices) and makes it trainable per `config.lora`."""
  cfg, base, tokenizer = load_model_sharded(config.model, mesh)
  return make_trainable(cfg, base, tokenizer, lora_config(config.lora), mesh, rng)


def make_sample_fn(cfg, params, tokenizer, section: ml_collections.ConfigDict
                   ) -> rl_generation.SampleFn:
  """The policy's sampler over formatted inputs, drawing as `section` (a job's `sampling`)
  says; rejection sampling and distillation use it (and tests watch it as a seam)."""
  return rl_generation.sampler_fn(Sampler(cfg, params, tokenizer), section.max_new_tokens,
                                  sample_config.sampling_params(section))


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
                        rng, run_config=run_config(config), unmerged=config.lora.unmerged)


def data_dir(config: ml_collections.ConfigDict) -> str | None:
  return config.get("data_dir") or None
