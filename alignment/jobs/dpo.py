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
import ml_collections

from alignment import lora as lora_lib
from alignment.data import batching, pipeline
from alignment.files import atomic
from alignment.jobs import common
from alignment.reward import data as reward_data
from alignment.reward.trainable import keep_last_lora_layers
from alignment.rl import dpo
from alignment.rl.dpo_validation import Validation
from alignment.schema import from_section
from alignment.training import distributed, run_lock

log = logging.getLogger(__name__)


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  dpo_cfg = from_section(dpo.DPOConfig, config.dpo, "config.dpo")
  reward_data.data_template(config.data)  # a misspelt template fails before the model loads
  if config.eval.batch_size < 1:
    raise ValueError(f"eval.batch_size={config.eval.batch_size} must be >= 1")
  job = common.prepare(config, "dpo", require_tokenizer=False)  # synthetic pairs need none
  workdir, mesh, trainable = job.workdir, job.mesh, job.trainable
  (state_rng,) = job.rngs
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer
  keep_last_lora_layers(trainable, config.lora.last_layers)  # cheaper backward
  dpo.add_frozen_reference(trainable, mesh)  # full fine-tuning only

  train_pairs, val_pairs, data_report = reward_data.build_pairs(config, tokenizer,
                                                                cfg.vocab_size)
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
  evaluate = Validation(cfg, lcfg, dpo_cfg, val_pairs, config.eval.batch_size, pipe.buckets,
                        pad_id, mesh)

  def at_start(ckpt) -> None:  # the starting model's validation, on a fresh run only
    if config.eval.at_start and (ckpt.latest_step() or 0) == 0:
      evaluate(0, trainer.state)

  with batches:
    result = trainer.fit(batches, example, workdir, evaluate=evaluate,
                         evaluate_every=config.eval.every, before=at_start)
  final_state, history = result.state, evaluate.history

  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(lora_lib.save_run_adapters(workdir, final_state.params, lcfg))
    summary = {"train": result.summary, "validation": history, "outputs": outputs,
               "data": data_report, "dpo": dataclasses.asdict(dpo_cfg)}
    atomic.write_json(workdir / "result.json", summary)
  return {"state": final_state, "history": history, "outputs": outputs, "data": data_report}
