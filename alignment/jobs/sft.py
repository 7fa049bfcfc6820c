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
from alignment.data import mixtures, pipeline, sources
from alignment.jobs import common
from alignment.sampling import Sampler
from alignment.training import distributed, losses

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
  mix_cfg = mixtures.MixtureConfig(
      base_source=d.base_source, num_base=d.num_base + held_out,
      safety_source=d.safety_source, columns=d.get("columns", ""), num_safety=d.num_safety,
      safety_fraction=d.safety_fraction if d.safety_fraction >= 0 else None,
      safety_format=d.safety_format, template=d.template, system_prompt=d.system_prompt,
      seed=config.seed, dedup=d.dedup, remove_eval_overlap=d.remove_eval_overlap)
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


def make_loss_fn(cfg, lcfg, unmerged: bool = False, logits_chunk: int = 0):
  """The SFT training loss over {"base", "lora"} params.

  `unmerged`: LoRA as low-rank paths beside the frozen projections (x W + s (x A) B), so the
  base gets no weight gradient; otherwise the adapters are merged into the weights first
  (fewer, larger matmuls: faster on a CPU, see docs/PERFORMANCE.md). `logits_chunk` > 0
  computes the cross-entropy that many positions at a time, never the full [B, T, V] logits.
  """
  lm_loss = losses.language_model_loss(cfg, logits_chunk or None)

  def loss_fn(params, batch, rng):
    if unmerged and lcfg is not None:
      paths = lora_lib.adapter_paths(params["lora"], lcfg, rng)
      return lm_loss(jax.lax.stop_gradient(params["base"]), batch, rng, lora=paths)
    return lm_loss(common.merged_params(params, lcfg, rng), batch, rng)

  return loss_fn


def make_eval_fn(cfg, lcfg):
  lm_loss = losses.language_model_loss(cfg)

  @jax.jit
  def eval_fn(params, batch):
    loss, aux = lm_loss(common.merged_params(params, lcfg), batch, jax.random.key(0))
    return loss * aux["num_target_tokens"], aux["num_target_tokens"]

  return eval_fn


def held_out_loss(eval_fn, params, batches, num_batches: int, mesh) -> float:
  total, count = 0.0, 0.0
  for _ in range(num_batches):
    try:
      batch = next(batches)
    except StopIteration:
      break
    loss_sum, n = eval_fn(params, distributed.global_batch(batch, mesh))
    total += float(loss_sum)
    count += float(n)
  return total / max(count, 1.0)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # The data first: its fingerprint is checked against a resumed run's before any write.
  train_examples, eval_examples, mixture_report = build_data(config)
  fingerprint = {k: mixture_report[k] for k in DATA_FINGERPRINT}
  job = common.prepare(config, "sft", data_fingerprint=fingerprint, data_file="mixture.json")
  workdir, mesh, trainable, template = job.workdir, job.mesh, job.trainable, job.template
  (state_rng,) = job.rngs
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer

  if distributed.is_primary():
    (workdir / "mixture.json").write_text(json.dumps(mixture_report, indent=2, default=str))
  pipe = pipeline.PipelineConfig(
      max_length=config.data.max_length, batch_size=config.train.batch_size,
      packing=config.data.packing, seed=config.seed, system=config.data.system_prompt,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      skip_long_prompts=True)
  batches = pipeline.make_batches(train_examples, tokenizer, template, pipe)
  eval_pipe = dataclasses.replace(pipe, shuffle=False, num_epochs=1, packing=False)

  example = pipeline.example_sft_batch(pipe)
  if config.train.logits_chunk < 0:
    raise ValueError(f"config.train.logits_chunk={config.train.logits_chunk} must be >= 0 "
                     "(0 = the full logits)")
  loss_fn = make_loss_fn(cfg, lcfg, config.lora.unmerged, config.train.logits_chunk)
  opt_cfg, state, train_step = common.compile_training(config, trainable, loss_fn, state_rng,
                                                       mesh, example)
  eval_fn = make_eval_fn(cfg, lcfg)
  prompts = [p.strip() for p in config.eval.prompts.split("|") if p.strip()]
  merge = jax.jit(lambda p: common.merged_params(p, lcfg))
  history: list[dict[str, Any]] = []

  def evaluate(step: int, state) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    if eval_examples:
      with pipeline.make_batches(eval_examples, tokenizer, template, eval_pipe) as eval_batches:
        record["eval_loss"] = held_out_loss(eval_fn, state.params, eval_batches,
                                            config.eval.batches, mesh)
    if prompts:
      sampler = Sampler(cfg, merge(state.params), tokenizer, template=template)
      record["samples"] = dict(zip(prompts, sampler(prompts, config.eval.max_new_tokens).text))
    history.append(record)
    if distributed.is_primary():
      log.info("step %d: %s", step, json.dumps(record, ensure_ascii=False)[:2000])
    return record

  with common.checkpointer(config, workdir, trainable) as ckpt, batches:
    result = common.train_with_evaluation(config, workdir, state, train_step, batches, ckpt,
                                          mesh, opt_cfg, evaluate)
  final_state = result.state

  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(common.save_lora(workdir, final_state.params, lcfg))
    if config.export_merged:
      from alignment.checkpoints.huggingface import save_safetensors  # pylint: disable=import-outside-toplevel
      outputs["merged_model"] = str(save_safetensors(
          cfg.replace(dtype="float32"), jax.device_get(merge(final_state.params)),
          workdir / "merged_hf"))
    summary = {"train": result.summary, "evaluations": history, "outputs": outputs,
               "train_examples": len(train_examples), "eval_examples": len(eval_examples),
               "tokenize": dataclasses.asdict(batches.stats) if batches.stats else None}
    (workdir / "result.json").write_text(json.dumps(summary, indent=2, default=str))
  return {"state": final_state, "history": history, "outputs": outputs}
