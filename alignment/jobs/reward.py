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

from alignment.data import batching, pipeline
from alignment.files import atomic
from alignment.jobs import common
from alignment.reward import data as reward_data
from alignment.reward import evaluate, losses
from alignment.reward import model as reward_model
from alignment.reward.saved import save_reward_model
from alignment.reward.trainable import add_head, keep_last_lora_layers
from alignment.schema import from_section
from alignment.training import distributed, run_lock

log = logging.getLogger(__name__)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the field, before any model or data is loaded."""
  reward_data.check_data(config.data)
  for name in ("steps", "batch_size", "eval_batch_size"):
    if config.train[name] < 1:
      raise ValueError(f"train.{name}={config.train[name]} must be >= 1")
  if config.train.learning_rate <= 0:
    raise ValueError(f"train.learning_rate={config.train.learning_rate} must be > 0")
  if config.lora.enabled and config.lora.last_layers < 0:
    raise ValueError(f"lora.last_layers={config.lora.last_layers} must be >= 0 (0 = all)")
  from_section(losses.RankingLossConfig, config.loss, "config.loss")


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  check_config(config)
  loss_cfg = from_section(losses.RankingLossConfig, config.loss, "config.loss")
  job = common.prepare(config, "reward", require_tokenizer=False)  # synthetic pairs need none
  workdir, mesh, trainable = job.workdir, job.mesh, job.trainable
  (state_rng,) = job.rngs
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer
  add_head(trainable, mesh)
  keep_last_lora_layers(trainable, config.lora.last_layers)

  train_pairs, val_pairs, data_report = reward_data.build_pairs(config, tokenizer,
                                                                cfg.vocab_size)
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
  r_chosen, r_rejected = evaluate.score_pairs(
      reward_model.make_pair_score_fn(cfg, lcfg), params, val_pairs,
      config.train.eval_batch_size, config.data.max_length, mesh, max(pad_id, 0))
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
