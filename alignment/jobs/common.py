"""Pieces every training job shares: run directory, mesh, model + LoRA parameters,
optimizer, checkpointer. Each takes its config section and returns library objects.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import ml_collections

from alignment import lora as lora_lib
from alignment import sharding
from alignment.checkpoints.loading import load_model
from alignment.model.config import ModelConfig
from alignment.training import checkpointing, distributed, optimizer
from alignment.training import train_state as train_state_lib


def start(config: ml_collections.ConfigDict) -> tuple[pathlib.Path, jax.sharding.Mesh]:
  """Joins the process group (if configured), builds the mesh, creates the run directory."""
  d = config.distributed
  distributed.initialize(distributed.DistributedConfig(
      initialize=d.initialize, coordinator_address=d.coordinator_address or None,
      num_processes=d.num_processes or None,
      process_id=None if d.process_id < 0 else d.process_id))
  mesh = sharding.make_mesh(sharding.MeshConfig(config.mesh.data, config.mesh.fsdp,
                                                config.mesh.tensor))
  workdir = pathlib.Path(config.workdir)
  if distributed.is_primary():
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  return workdir, mesh


def lora_config(section: ml_collections.ConfigDict) -> lora_lib.LoraConfig | None:
  if not section.enabled:
    return None
  targets = tuple(t.strip() for t in section.targets.split(",") if t.strip())
  return lora_lib.LoraConfig(rank=section.rank, alpha=section.alpha, dropout=section.dropout,
                             targets=targets)


@dataclasses.dataclass
class Trainable:
  """The parameters a job optimises: {"base": decoder, "lora": adapters or {}} (+ extras).

  With LoRA the base is frozen (no optimizer state); otherwise everything trains.
  """

  model_config: ModelConfig
  params: dict[str, Any]
  lora: lora_lib.LoraConfig | None
  tokenizer: Any
  frozen: tuple[str, ...]
  shardings: dict[str, Any]


def load_trainable(config: ml_collections.ConfigDict, mesh, rng: jax.Array,
                   extra_params: dict[str, Any] | None = None,
                   extra_axes: dict[str, Any] | None = None) -> Trainable:
  """Loads the model named by `config.model`, adds adapters per `config.lora`, and places
  everything on the mesh by the logical-axis rules."""
  cfg, base, tokenizer = load_model(config.model)
  lcfg = lora_config(config.lora)
  params: dict[str, Any] = {"base": base, "lora": {}}
  shardings: dict[str, Any] = {"base": sharding.param_shardings(cfg, mesh), "lora": {}}
  if lcfg is not None:
    params["lora"] = lora_lib.init_adapters(cfg, lcfg, rng)
    shardings["lora"] = sharding.logical_to_shardings(
        lora_lib.adapter_logical_axes(cfg, lcfg), jax.eval_shape(lambda: params["lora"]), mesh)
  for name, value in (extra_params or {}).items():
    params[name] = value
    shardings[name] = sharding.logical_to_shardings(
        (extra_axes or {})[name], jax.eval_shape(lambda v=value: v), mesh)
  frozen = ("^base/",) if lcfg is not None else ()
  return Trainable(cfg, params, lcfg, tokenizer, frozen, shardings)


def merged_params(trainable_params: dict[str, Any], lcfg: lora_lib.LoraConfig | None,
                  dropout_rng: jax.Array | None = None) -> Any:
  """The decoder parameters the model runs with: base (+ adapters when LoRA is on)."""
  if lcfg is None:
    return trainable_params["base"]
  base = jax.lax.stop_gradient(trainable_params["base"])
  return lora_lib.merge(base, trainable_params["lora"], lcfg, dropout_rng)


def optimizer_config(train: ml_collections.ConfigDict,
                     frozen: tuple[str, ...]) -> optimizer.OptimizerConfig:
  return optimizer.OptimizerConfig(
      learning_rate=train.learning_rate, schedule=train.schedule,
      # Warmup must leave at least one decay step (optax's cosine needs one).
      warmup_steps=min(train.warmup_steps, max(train.steps // train.grad_accum_steps - 1, 0)),
      total_steps=train.steps // train.grad_accum_steps, weight_decay=train.weight_decay,
      max_grad_norm=train.max_grad_norm or None, grad_accum_steps=train.grad_accum_steps,
      frozen=frozen)


def new_state(trainable: Trainable, tx, rng: jax.Array, mesh):
  return train_state_lib.train_state_from_params(trainable.params, tx, rng, mesh,
                                                 trainable.shardings)


def checkpointer(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 trainable: Trainable | None = None) -> checkpointing.Checkpointer:
  """The run's checkpointer; with LoRA the frozen base is not written (the job reloads it)."""
  skip = ("base",) if trainable is not None and trainable.lora is not None else ()
  return checkpointing.Checkpointer(
      checkpointing.CheckpointConfig(str(workdir / "checkpoints"),
                                     save_every=config.checkpoint.every,
                                     max_to_keep=config.checkpoint.keep,
                                     async_save=config.checkpoint.async_save,
                                     skip_params=skip),
      run_config=json.loads(config.to_json_best_effort()))


def data_dir(config: ml_collections.ConfigDict) -> str | None:
  return config.get("data_dir") or None
