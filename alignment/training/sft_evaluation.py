"""What an SFT run measures while it trains: held-out loss and greedy answers to sample
prompts, and (from those answers) the before/after table the README's demo prints.

`SFTEvaluation` is the `evaluate(step, state)` callable of `Trainer.fit`; its `history` is
written to result.json, so a finished run keeps the answers it printed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import jax

from alignment import lora as lora_lib
from alignment.data import pipeline
from alignment.data.records import InstructionExample
from alignment.judges.refusal import classify_refusal
from alignment.model.config import ModelConfig
from alignment.prompts.templates import PromptTemplate
from alignment.sampling import Sampler
from alignment.training import distributed, losses

log = logging.getLogger(__name__)


class SFTEvaluation:
  """Held-out loss over `num_batches` unshuffled batches of `held_out` and greedy answers
  (`max_new_tokens`) to `prompts`, from the adapters-merged decoder; one record per call."""

  def __init__(self, cfg: ModelConfig, lcfg: lora_lib.LoraConfig | None, tokenizer,
               template: PromptTemplate | None, held_out: Sequence[InstructionExample],
               pipe: pipeline.PipelineConfig, num_batches: int, prompts: Sequence[str],
               max_new_tokens: int, mesh):
    self.cfg, self.tokenizer, self.template, self.mesh = cfg, tokenizer, template, mesh
    self.held_out, self.num_batches = list(held_out), num_batches
    self.pipe = dataclasses.replace(pipe, shuffle=False, num_epochs=1, packing=False)
    self.prompts, self.max_new_tokens = list(prompts), max_new_tokens
    self.eval_fn = losses.sft_eval_fn(cfg, lcfg)
    self.merge = jax.jit(lambda p: lora_lib.decoder_params(p, lcfg))
    self.history: list[dict[str, Any]] = []

  def __call__(self, step: int, state) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    if self.held_out:
      with pipeline.make_batches(self.held_out, self.tokenizer, self.template,
                                 self.pipe) as batches:
        record["eval_loss"] = losses.held_out_loss(self.eval_fn, state.params, batches,
                                                   self.num_batches, self.mesh)
    if self.prompts:
      sampler = Sampler(self.cfg, self.merge(state.params), self.tokenizer,
                        template=self.template)
      record["samples"] = dict(zip(self.prompts,
                                   sampler(self.prompts, self.max_new_tokens).text))
    self.history.append(record)
    if distributed.is_primary():
      log.info("step %d: %s", step, json.dumps(record, ensure_ascii=False)[:2000])
    return record


def before_after(history: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
  """(prompt, answer at step 0, answer at the last step) for each sample prompt; [] unless
  the history starts at step 0 (a resumed run has no "before") and has a later record."""
  sampled = [r for r in history if "samples" in r]
  if len(sampled) < 2 or sampled[0]["step"] != 0:
    return []
  first, last = sampled[0]["samples"], sampled[-1]["samples"]
  return [(p, first[p], last[p]) for p in first if p in last]


def format_before_after(rows: Sequence[tuple[str, str, str]], title: str,
                        width: int = 100) -> str:
  """The rows as a terminal table, each answer tagged by the string-match refusal judge."""
  lines = ["=" * width, title]
  for prompt, before, after in rows:
    lines += ["-" * width, f"[prompt] {prompt}"]
    for label, answer in (("before", before), ("after", after)):
      text = " ".join(answer.split())[:300] or "(empty)"
      lines.append(f"  {label:>6} [{classify_refusal(answer).label}]: {text}")
  lines.append("=" * width)
  return "\n".join(lines)
