"""Job `reward`: train a reward model on preference pairs and evaluate it on held-out pairs.

Loads the model named by `config.model`, splits the pairs of `config.data.source` into train
and validation (seeded, by conversation), trains the scalar head with LoRA or full
fine-tuning under the ranking loss with the shared loop (checkpoints, resume, TensorBoard,
summary.json), then writes to `workdir`: eval.json (accuracy, score distributions,
calibration, split), calibration.png and reward_model/ (what `alignment.reward.scorer` loads).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax
import ml_collections
import numpy as np

from alignment import schema
from alignment import sharding
from alignment.data import batching, pipeline, user_files
from alignment.jobs import common
from alignment.schema import from_section
from alignment.reward import data as reward_data
from alignment.reward import evaluate, losses
from alignment.reward import model as reward_model
from alignment.reward.saved import save_reward_model
from alignment.files import atomic
from alignment.training import distributed, run_lock

log = logging.getLogger(__name__)

SOURCES = ("hh_harmless", "hh_helpful", "synthetic")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the field, before any model or data is loaded."""
  d, t = config.data, config.train
  names = list(schema.names(d.source))
  if not names or any(n not in SOURCES and not user_files.is_path(n) for n in names):
    raise ValueError(f"data.source={d.source!r}; expected one of {SOURCES} or a file of "
                     "prompt/chosen/rejected pairs (.jsonl, .json, .csv, .parquet)")
  reward_data.data_template(d)  # a misspelt template fails before the model loads
  if not 0.0 < d.validation_fraction < 1.0:
    raise ValueError(f"data.validation_fraction={d.validation_fraction} must be in (0, 1)")
  for name in ("max_pairs", "max_validation_pairs", "synthetic_pairs"):
    if d[name] < 0:
      raise ValueError(f"data.{name}={d[name]} must be >= 0 (0 = all)")
  if d.source == "synthetic" and d.synthetic_pairs < 2:
    raise ValueError("data.source='synthetic' needs data.synthetic_pairs >= 2")
  for name in ("steps", "batch_size", "eval_batch_size"):
    if t[name] < 1:
      raise ValueError(f"train.{name}={t[name]} must be >= 1")
  if t.learning_rate <= 0:
    raise ValueError(f"train.learning_rate={t.learning_rate} must be > 0")
  if config.lora.enabled and config.lora.last_layers < 0:
    raise ValueError(f"lora.last_layers={config.lora.last_layers} must be >= 0 (0 = all)")
  from_section(losses.RankingLossConfig, config.loss, "config.loss")


def build_pairs(config: ml_collections.ConfigDict, tokenizer, vocab_size: int
                ) -> tuple[list, list, dict[str, Any]]:
  """(train pairs, validation pairs) tokenized, and a report: see reward.data.build_pairs."""
  return reward_data.build_pairs(config, tokenizer, vocab_size)


def score_pairs(score_fn, params, pairs: list, batch_size: int, max_length: int, mesh,
                pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(r_chosen, r_rejected) over `pairs`, in fixed-size batches (the last padded by repeats)."""
  buckets = batching.default_buckets(max_length)
  chosen, rejected = [], []
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    padded = chunk + [chunk[0]] * (batch_size - len(chunk))
    batch = distributed.global_batch(batching.pad_pair_batch(padded, buckets, pad_id), mesh)
    r_c, r_r = score_fn(params, batch)
    chosen.append(np.asarray(r_c)[:len(chunk)])
    rejected.append(np.asarray(r_r)[:len(chunk)])
  return np.concatenate(chosen), np.concatenate(rejected)


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  check_config(config)
  loss_cfg = from_section(losses.RankingLossConfig, config.loss, "config.loss")
  job = common.prepare(config, "reward", require_tokenizer=False)  # synthetic pairs need none
  workdir, mesh, trainable = job.workdir, job.mesh, job.trainable
  (state_rng,) = job.rngs
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer
  # The head trains fully beside the base (full fine-tuning) or the adapters (LoRA).
  head = reward_model.init_head(cfg)
  trainable.params["head"] = head
  trainable.shardings["head"] = sharding.logical_to_shardings(
      reward_model.HEAD_AXES, jax.eval_shape(lambda: head), mesh)
  if lcfg is not None:
    for key in ("params", "shardings"):
      tree = getattr(trainable, key)
      tree["lora"] = reward_model.select_lora_layers(tree["lora"], cfg.num_layers,
                                                     config.lora.last_layers)

  train_pairs, val_pairs, data_report = build_pairs(config, tokenizer, cfg.vocab_size)
  log.info("reward data: %s", json.dumps(data_report))
  pad_id = tokenizer.pad_id if tokenizer is not None else 0
  pipe = pipeline.PipelineConfig(
      max_length=config.data.max_length, batch_size=config.train.batch_size, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count())
  batches = pipeline.batch_tokenized(train_pairs, pipe, pad_id)
  example = batching.pad_pair_batch(train_pairs[:config.train.batch_size],
                                    pipe.validated().buckets, max(pad_id, 0))

  trainer = common.make_trainer(config, trainable, losses.make_loss_fn(cfg, lcfg, loss_cfg),
                                state_rng, mesh)
  with batches:
    result = trainer.fit(batches, example, workdir)
  params = result.state.params

  @jax.jit
  def score_fn(p, batch):
    return reward_model.pair_rewards(cfg, reward_model.scalar_head_params(p, lcfg), batch)

  r_chosen, r_rejected = score_pairs(score_fn, params, val_pairs,
                                     config.train.eval_batch_size, config.data.max_length,
                                     mesh, max(pad_id, 0))
  report = evaluate.evaluation_report(r_chosen, r_rejected)
  report.update(split="validation", data=data_report, train=result.summary)
  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    atomic.write_json(workdir / "eval.json", report)
    report["scores"] = {"chosen": r_chosen.tolist(), "rejected": r_rejected.tolist()}
    outputs["calibration_png"] = str(evaluate.plot_calibration(
        report, workdir / "calibration.png",
        title=f"{data_report['source']} reward model, validation"))
    atomic.write_json(workdir / "scores.json", report["scores"], indent=None)
    outputs["reward_model"] = str(save_reward_model(
        workdir / "reward_model", cfg, params, lcfg, tokenizer, config.model.to_dict(),
        {"source": data_report["source"], "max_length": config.data.max_length,
         # "hh": prompts as stored (HH turns); else the template that wrapped them.
         "prompt_format": config.data.get("template") or "hh",
         "lora_last_layers": config.lora.last_layers,
         "validation_accuracy": report["accuracy"], "validation_pairs": report["pairs"]}))
  log.info("validation accuracy %.4f +- %.4f over %d pairs", report["accuracy"],
           report["accuracy_stderr"], report["pairs"])
  print(f"reward model ({data_report['source']}): validation accuracy "
        f"{report['accuracy']:.4f} (+- {report['accuracy_stderr']:.4f}) on {report['pairs']} "
        f"pairs; ranking loss {report['ranking_loss']:.4f}; wrote {workdir}")
  return {"state": result.state, "report": report, "outputs": outputs}
