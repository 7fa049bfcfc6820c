"""Job `dpo`: Direct Preference Optimization on HH preference pairs against a frozen reference.

Pairs come from one or more preference sources ('hh_harmless,hh_helpful'), split into train
and validation by conversation with `seed` (`alignment.reward.data.split_pairs`), or from the
synthetic task for tests. Long HH prompts keep their end. With LoRA the reference is the base
with adapters off; full fine-tuning keeps a frozen copy. Validation preference accuracy (the
policy's implicit reward ranks the chosen reply higher) is measured before training, every
`eval.every` steps and at the end. Writes to `workdir`: checkpoints/, TensorBoard events,
data.json, adapters.npz (LoRA) and result.json (last).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alignment import lora as lora_lib
from alignment import model as model_lib
from alignment import sharding
from alignment.data import batching, pipeline
from alignment.jobs import common
from alignment.schema import from_section
from alignment.reward import data as reward_data
from alignment.reward import model as reward_model
from alignment.rl import dpo
from alignment.files import atomic
from alignment.training import distributed, run_lock

log = logging.getLogger(__name__)


def dpo_config(config: ml_collections.ConfigDict) -> dpo.DPOConfig:
  return from_section(dpo.DPOConfig, config.dpo, "config.dpo")


def build_pairs(config: ml_collections.ConfigDict, tokenizer, vocab_size: int
                ) -> tuple[list, list, dict[str, Any]]:
  """(train pairs, validation pairs) tokenized, and a report: see reward.data.build_pairs."""
  return reward_data.build_pairs(config, tokenizer, vocab_size)


def make_eval_fn(cfg, lcfg, dpo_cfg: dpo.DPOConfig):
  """Jitted (params, batch) -> sums over the batch's real pairs (batch["weight"] = 1)."""
  @jax.jit
  def eval_fn(params, batch):
    policy, reference = dpo.policy_and_reference(params, lcfg)
    pc, pr = dpo.pair_logprobs(cfg, policy, batch)
    rc, rr = dpo.pair_logprobs(cfg, reference, batch)
    terms = dpo.pair_terms(pc, pr, rc, rr, dpo_cfg)
    w = batch["weight"]
    return {k: jnp.sum(v * w) for k, v in terms.items()} | {"count": jnp.sum(w)}

  return eval_fn


def validation_metrics(eval_fn, params, pairs: list, batch_size: int, buckets, pad_id: int,
                       mesh) -> dict[str, float]:
  """Means over every validation pair, in fixed-size batches (the last filled by repeats)."""
  totals: dict[str, float] = {}
  rows = batching.host_rows(batch_size, jax.process_index(), jax.process_count())
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    padded = chunk + [chunk[0]] * (batch_size - len(chunk))
    batch = batching.pad_pair_batch(padded, buckets, pad_id, rows=rows)
    batch["weight"] = (np.arange(batch_size) < len(chunk)).astype(np.float32)[rows]
    sums = jax.device_get(eval_fn(params, distributed.global_batch(batch, mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = max(totals.pop("count", 0.0), 1.0)
  return {f"val_{k}": v / count for k, v in totals.items()}


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  dpo_cfg = dpo_config(config)
  reward_data.data_template(config.data)  # a misspelt template fails before the model loads
  if config.eval.batch_size < 1:
    raise ValueError(f"eval.batch_size={config.eval.batch_size} must be >= 1")
  job = common.prepare(config, "dpo", require_tokenizer=False)  # synthetic pairs need none
  workdir, mesh, trainable = job.workdir, job.mesh, job.trainable
  (state_rng,) = job.rngs
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer
  if lcfg is not None:
    for key in ("params", "shardings"):  # adapters on the top layers only: cheaper backward
      tree = getattr(trainable, key)
      tree["lora"] = reward_model.select_lora_layers(tree["lora"], cfg.num_layers,
                                                     config.lora.last_layers)
  else:  # full fine-tuning: a frozen copy of the starting weights is the reference
    trainable.params["reference"] = jax.tree.map(jnp.copy, trainable.params["base"])
    trainable.shardings["reference"] = sharding.logical_to_shardings(
        model_lib.param_logical_axes(cfg), jax.eval_shape(lambda: trainable.params["base"]),
        mesh)
    trainable.frozen = (*trainable.frozen, "^reference/")

  train_pairs, val_pairs, data_report = build_pairs(config, tokenizer, cfg.vocab_size)
  log.info("dpo data: %s", json.dumps(data_report))
  if distributed.is_primary():
    atomic.write_json(workdir / "data.json", data_report)
  pad_id = max(tokenizer.pad_id, 0) if tokenizer is not None else 0
  pipe = pipeline.PipelineConfig(
      max_length=config.data.max_length, batch_size=config.train.batch_size, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count()).validated()
  batches = pipeline.batch_tokenized(train_pairs, pipe, pad_id)
  rows = batching.host_rows(config.train.batch_size, jax.process_index(), jax.process_count())
  example = batching.pad_pair_batch(train_pairs[:config.train.batch_size], pipe.buckets,
                                    pad_id, rows=rows)

  trainer = common.make_trainer(config, trainable, dpo.make_loss_fn(cfg, lcfg, dpo_cfg),
                                state_rng, mesh)
  eval_fn = make_eval_fn(cfg, lcfg, dpo_cfg)
  history: list[dict[str, Any]] = []

  def evaluate(step: int, state) -> dict[str, Any]:
    record = {"step": step, **validation_metrics(eval_fn, state.params, val_pairs,
                                                 config.eval.batch_size, pipe.buckets,
                                                 pad_id, mesh)}
    history.append(record)
    if distributed.is_primary():
      log.info("validation at step %d: %s", step, json.dumps(record))
    return record

  def at_start(ckpt) -> None:  # the starting model's validation, on a fresh run only
    if config.eval.at_start and (ckpt.latest_step() or 0) == 0:
      evaluate(0, trainer.state)

  with batches:
    result = trainer.fit(batches, example, workdir, evaluate=evaluate,
                         evaluate_every=config.eval.every, before=at_start)
  final_state = result.state

  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(lora_lib.save_run_adapters(workdir, final_state.params, lcfg))
    summary = {"train": result.summary, "validation": history, "outputs": outputs,
               "data": data_report, "dpo": dataclasses.asdict(dpo_cfg)}
    atomic.write_json(workdir / "result.json", summary)
  return {"state": final_state, "history": history, "outputs": outputs, "data": data_report}
