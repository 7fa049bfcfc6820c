"""Job `sft`: supervised fine-tuning on an instruction mixture with K safety examples.

Response-only next-token loss (prompt tokens carry no loss), LoRA or full fine-tuning, packed
or padded batches, held-out loss and sample answers every `eval.every` steps
(`training.sft_evaluation`), resumable from the run directory's checkpoints. With
`eval.before_after` the sample prompts are also answered by the starting model (step 0) and
the answers before and after training are printed side by side (the README's demo). Writes to
`workdir`: checkpoints/, TensorBoard events, mixture.json (what went in), adapters.npz (LoRA)
and result.json (written last, so a sweep can tell a finished run).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from alignment import lora as lora_lib
from alignment.checkpoints import huggingface
from alignment.data import mixtures, pipeline
from alignment.files import atomic
from alignment.jobs import common
from alignment.schema import from_section, names
from alignment.training import distributed, losses, run_lock, sft_evaluation

# What identifies the training data of a run (fields of mixture.json).
DATA_FINGERPRINT = ("sha256", "num_base", "num_safety")


def build_data(config: ml_collections.ConfigDict) -> tuple[list, list, dict]:
  """(train examples, held-out examples, mixture report) for `config.data`: the mixture is
  drawn with `eval_examples` extra base examples, which are then held out."""
  d = config.data
  mix_cfg = from_section(
      mixtures.MixtureConfig, d, "config.data", num_base=d.num_base + d.eval_examples,
      safety_fraction=d.safety_fraction if d.safety_fraction >= 0 else None, seed=config.seed)
  examples, report = mixtures.build_mixture(mix_cfg, common.data_dir(config))
  train, held_out = mixtures.split_held_out(examples, d.base_source, d.eval_examples)
  if not train:
    raise ValueError("the training mixture is empty: set data.num_base or data.num_safety > 0")
  return train, held_out, dataclasses.asdict(report)


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # The data first: its fingerprint is checked against a resumed run's before any write.
  train_examples, eval_examples, mixture_report = build_data(config)
  fingerprint = {k: mixture_report[k] for k in DATA_FINGERPRINT}
  job = common.prepare(config, "sft", data_fingerprint=fingerprint, data_file="mixture.json")
  workdir, mesh, trainable, template = job.workdir, job.mesh, job.trainable, job.template
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer
  if distributed.is_primary():
    atomic.write_json(workdir / "mixture.json", mixture_report)

  pipe = pipeline.PipelineConfig(
      max_length=config.data.max_length, batch_size=config.train.batch_size,
      packing=config.data.packing, seed=config.seed, system=config.data.system_prompt,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      skip_long_prompts=True)
  batches = pipeline.make_batches(train_examples, tokenizer, template, pipe)
  loss_fn = losses.sft_loss_fn(cfg, lcfg, config.lora.unmerged, config.train.logits_chunk,
                               config.train.loss_positions)
  trainer = common.make_trainer(config, trainable, loss_fn, job.rngs[0], mesh)
  e = config.eval
  evaluate = sft_evaluation.SFTEvaluation(cfg, lcfg, tokenizer, template, eval_examples, pipe,
                                          e.batches, names(e.prompts, "|"), e.max_new_tokens,
                                          mesh)

  def at_start(_ckpt) -> None:  # before the loop restores anything: the starting model
    if e.before_after:
      evaluate(0, trainer.state)

  with batches:
    result = trainer.fit(batches, pipeline.example_sft_batch(pipe), workdir,
                         evaluate=evaluate, evaluate_every=e.every, before=at_start)

  # Every process takes part in gathering what is written (a collective across hosts).
  adapters = distributed.fetch(result.state.params["lora"])
  merged = distributed.fetch(evaluate.merge(result.state.params)) if config.export_merged \
      else None
  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(lora_lib.save_run_adapters(workdir, {"lora": adapters}, lcfg))
    if config.export_merged:  # a LoRA run can also be exported later by configs/export.py
      outputs["merged_model"] = str(huggingface.save_safetensors(
          cfg.replace(dtype="float32"), merged, workdir / "merged_hf", tokenizer=tokenizer))
    atomic.write_json(workdir / "result.json", {
        "train": result.summary, "evaluations": evaluate.history, "outputs": outputs,
        "train_examples": len(train_examples), "eval_examples": len(eval_examples),
        "tokenize": dataclasses.asdict(batches.stats) if batches.stats else None})
    rows = sft_evaluation.before_after(evaluate.history)
    if e.before_after and rows:
      d = config.data
      print(sft_evaluation.format_before_after(rows, (
          f"Before and after {config.train.steps} steps on {d.num_base} {d.base_source} + "
          f"{d.num_safety} {d.safety_source} examples (greedy decoding, refusal by string "
          "match)")) + f"\nrun directory: {workdir}")
  return {"state": result.state, "history": evaluate.history, "outputs": outputs}
