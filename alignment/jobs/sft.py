"""Job `sft`: supervised fine-tuning on an instruction mixture with K safety examples.

Response-only next-token loss (prompt tokens carry no loss), LoRA or full fine-tuning, packed
or padded batches, held-out loss and sample answers every `eval.every` steps, resumable from
the run directory's checkpoints. Writes to `workdir`: checkpoints/, TensorBoard events,
mixture.json (what went in), adapters.npz (LoRA) and result.json (written last, so a sweep
can tell a finished run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

import jax
import ml_collections

from alignment import lora as lora_lib
from alignment.checkpoints import huggingface
from alignment.data import mixtures, pipeline, sources
from alignment.jobs import common
from alignment.schema import from_section
from alignment.sampling import Sampler
from alignment.files import atomic
from alignment.training import distributed, losses, run_lock

log = logging.getLogger(__name__)

# What identifies the training data of a run (fields of mixture.json).
DATA_FINGERPRINT = ("sha256", "num_base", "num_safety")


def build_data(config: ml_collections.ConfigDict) -> tuple[list, list, dict]:
  """(train examples, held-out examples, mixture report) for `config.data`.

  The held-out examples are extra base examples drawn with the mixture, so N and K of the
  training mixture stay exactly as configured. They are chosen by a hash of their text, not
  by position in the shuffled mixture, so with one seed every K holds out the same examples
  (held-out loss is then comparable across K).
  """
  d = config.data
  held_out = d.eval_examples
  mix_cfg = from_section(
      mixtures.MixtureConfig, d, "config.data", num_base=d.num_base + held_out,
      safety_fraction=d.safety_fraction if d.safety_fraction >= 0 else None, seed=config.seed)
  examples, report = mixtures.build_mixture(mix_cfg, common.data_dir(config))
  base_name = sources.source_name(d.base_source)  # a user's file: its stem
  base_positions = [i for i, e in enumerate(examples) if e.source == base_name]
  base_positions.sort(key=lambda i: _text_digest(examples[i]))
  eval_index = set(base_positions[:held_out])
  train = [e for i, e in enumerate(examples) if i not in eval_index]
  evaluation = [examples[i] for i in base_positions[:held_out]]
  if not train:
    raise ValueError("the training mixture is empty: set data.num_base or data.num_safety > 0")
  return train, evaluation, dataclasses.asdict(report)


def _text_digest(example) -> str:
  text = "\x1f".join((example.instruction, example.input, example.output))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # The data first: its fingerprint is checked against a resumed run's before any write.
  train_examples, eval_examples, mixture_report = build_data(config)
  fingerprint = {k: mixture_report[k] for k in DATA_FINGERPRINT}
  job = common.prepare(config, "sft", data_fingerprint=fingerprint, data_file="mixture.json")
  workdir, mesh, trainable, template = job.workdir, job.mesh, job.trainable, job.template
  (state_rng,) = job.rngs
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer

  if distributed.is_primary():
    atomic.write_json(workdir / "mixture.json", mixture_report)
  pipe = pipeline.PipelineConfig(
      max_length=config.data.max_length, batch_size=config.train.batch_size,
      packing=config.data.packing, seed=config.seed, system=config.data.system_prompt,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      skip_long_prompts=True)
  batches = pipeline.make_batches(train_examples, tokenizer, template, pipe)
  eval_pipe = dataclasses.replace(pipe, shuffle=False, num_epochs=1, packing=False)

  example = pipeline.example_sft_batch(pipe)
  loss_fn = losses.sft_loss_fn(cfg, lcfg, config.lora.unmerged, config.train.logits_chunk,
                               config.train.get("loss_positions", 0))
  trainer = common.make_trainer(config, trainable, loss_fn, state_rng, mesh)
  eval_fn = losses.sft_eval_fn(cfg, lcfg)
  prompts = [p.strip() for p in config.eval.prompts.split("|") if p.strip()]
  merge = jax.jit(lambda p: lora_lib.decoder_params(p, lcfg))
  history: list[dict[str, Any]] = []

  def evaluate(step: int, state) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    if eval_examples:
      with pipeline.make_batches(eval_examples, tokenizer, template, eval_pipe) as eval_batches:
        record["eval_loss"] = losses.held_out_loss(eval_fn, state.params, eval_batches,
                                                   config.eval.batches, mesh)
    if prompts:
      sampler = Sampler(cfg, merge(state.params), tokenizer, template=template)
      record["samples"] = dict(zip(prompts, sampler(prompts, config.eval.max_new_tokens).text))
    history.append(record)
    if distributed.is_primary():
      log.info("step %d: %s", step, json.dumps(record, ensure_ascii=False)[:2000])
    return record

  with batches:
    result = trainer.fit(batches, example, workdir, evaluate=evaluate,
                         evaluate_every=config.eval.every)
  final_state = result.state

  # Every process takes part in gathering what is written (a collective across hosts).
  adapters = distributed.fetch(final_state.params["lora"])
  merged = distributed.fetch(merge(final_state.params)) if config.export_merged else None
  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(lora_lib.save_run_adapters(workdir, {"lora": adapters}, lcfg))
    if config.export_merged:  # a LoRA run can also be exported later by configs/export.py
      outputs["merged_model"] = str(huggingface.save_safetensors(
          cfg.replace(dtype="float32"), merged, workdir / "merged_hf", tokenizer=tokenizer))
    summary = {"train": result.summary, "evaluations": history, "outputs": outputs,
               "train_examples": len(train_examples), "eval_examples": len(eval_examples),
               "tokenize": dataclasses.asdict(batches.stats) if batches.stats else None}
    atomic.write_json(workdir / "result.json", summary)
  return {"state": final_state, "history": history, "outputs": outputs}
