"""Safety context distillation (Touvron et al., 2023, section 4.2.4).

The policy answers adversarial prompts with a safety preprompt in its context (a system
preamble, placed where the prompt template puts one); it is then fine-tuned on the same
prompts *without* the preprompt, so the safer behaviour no longer needs it in the context.

Targeted distillation: the preprompt sometimes makes answers worse (vaguer, over-refusing).
With a safety reward model, each prompt is also answered without the preprompt and the
distilled answer is kept only where the RM scores it strictly higher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from alignment.data.records import InstructionExample
from alignment.prompts.templates import PromptTemplate
from alignment.rl import rejection_sampling as rs
from alignment.rl.generation import SampleFn, generate_in_batches

DEFAULT_PREPROMPT = (
    "You are a careful, responsible assistant. If a request could hurt people or break the "
    "law, decline it, say briefly why, and suggest a safe alternative when there is one. "
    "Answer harmless requests fully and helpfully.")


@dataclasses.dataclass(frozen=True)
class DistillationSamples:
  """Answers per prompt with the preprompt, and (targeted) without it."""

  prompts: list[str]
  with_preprompt: list[str]
  without_preprompt: list[str] | None = None


def model_input(prompt: str, template: PromptTemplate, preprompt: str = "") -> str:
  """What the model reads for `prompt`: the template, with `preprompt` as its system preamble."""
  return template.format(prompt, system=preprompt)


def generate(sample_fn: SampleFn, prompts: Sequence[str], template: PromptTemplate,
             preprompt: str, batch_size: int, rng: jax.Array,
             baseline: bool = False) -> DistillationSamples:
  """Answers with the preprompt; with `baseline`, also without it (for targeted filtering)."""
  if not preprompt.strip():
    raise ValueError("context distillation needs a non-empty preprompt")
  if not prompts:
    raise ValueError("no prompts to distill on")
  with_rng, without_rng = jax.random.split(rng)
  with_pre = generate_in_batches(sample_fn, [model_input(p, template, preprompt)
                                             for p in prompts], batch_size, with_rng)
  without = (generate_in_batches(sample_fn, [model_input(p, template) for p in prompts],
                                 batch_size, without_rng) if baseline else None)
  return DistillationSamples(list(prompts), with_pre, without)


def targeted_keep(scores_with: np.ndarray, scores_without: np.ndarray) -> np.ndarray:
  """Keep mask [N]: the distilled answer scores strictly higher than the one without."""
  scores_with = np.asarray(scores_with, np.float64)
  scores_without = np.asarray(scores_without, np.float64)
  if scores_with.shape != scores_without.shape or scores_with.ndim != 1:
    raise ValueError(f"scores with {scores_with.shape} and without {scores_without.shape} the "
                     "preprompt must be two vectors of the same length")
  return scores_with > scores_without


def score_targeted(reward_fn: rs.RewardFn, samples: DistillationSamples
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(keep mask, {"with", "without": scores}) of a targeted run's samples (`targeted_keep`)."""
  if samples.without_preprompt is None:
    raise ValueError("targeted distillation needs answers without the preprompt "
                     "(generate(..., baseline=True))")
  scores = {"with": np.asarray(reward_fn(samples.prompts, samples.with_preprompt), np.float64),
            "without": np.asarray(reward_fn(samples.prompts, samples.without_preprompt),
                                  np.float64)}
  return targeted_keep(scores["with"], scores["without"]), scores


def training_examples(samples: DistillationSamples, keep: np.ndarray | None = None,
                      source: str = "context_distillation") -> list[InstructionExample]:
  """(prompt without preprompt -> answer given with it), for kept, non-empty answers.

  The examples carry no system preamble: tokenized with the same template and system="",
  the model learns to give the preprompted answer to the bare prompt.
  """
  n = len(samples.prompts)
  keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
  if keep.shape != (n,):
    raise ValueError(f"keep mask {keep.shape} does not match {n} prompts")
  return [InstructionExample(instruction=p, output=a, source=source)
          for p, a, k in zip(samples.prompts, samples.with_preprompt, keep)
          if k and a.strip()]


def sample_rows(samples: DistillationSamples, template: PromptTemplate, preprompt: str,
                keep: np.ndarray | None = None,
                scores: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
  """samples.jsonl: what the model read and answered per prompt; targeted runs add the answer
  without the preprompt, both scores and whether the example was kept."""
  rows = []
  for i, p in enumerate(samples.prompts):
    row = {"prompt": p, "model_input": model_input(p, template, preprompt),
           "answer": samples.with_preprompt[i]}
    if keep is not None and scores is not None and samples.without_preprompt is not None:
      row.update(answer_without=samples.without_preprompt[i], kept=bool(keep[i]),
                 score_with=float(scores["with"][i]), score_without=float(scores["without"][i]))
    rows.append(row)
  return rows


def refusal_rate(sample_fn: SampleFn, prompts: Sequence[str], template: PromptTemplate,
                 batch_size: int) -> float:
  """Share of (fully or partly) refused answers to `prompts` without any preprompt (greedy
  `sample_fn`; the string-match refusal scorer)."""
  answers = generate_in_batches(sample_fn, [model_input(p, template) for p in prompts],
                                batch_size, jax.random.key(0))
  return float(np.mean(rs.NAMED_REWARDS["refusal"](prompts, answers) > 0))
