"""A prompt template judged against a baseline: the same model, prompts and decoding, only the
template differs (the `template_eval` job).

Why its own module: a template may only be judged on data it was not written from
(`check_held_out`), a dynamic template picks its branch per prompt (`render_prompt`: by tag,
or by the safe/unsafe label, an oracle and so an upper bound), and the comparison table puts
the two runs' refusal and harmfulness side by side per set.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Sequence

import jax

from alignment.answers.records import AnswerRecord
from alignment.data.records import EvalPrompt
from alignment.evaluation import generation, summary, tables
from alignment.files import atomic
from alignment.prompts.library import DynamicTemplate, Template, template_texts
from alignment.sampling import Sampler, SamplingParams

CONDITIONS = ("baseline", "template")
ROUTES = ("tag", "label")


def _norm(text: str) -> str:
  return re.sub(r"\s+", " ", text).strip().lower()


def check_held_out(template: Template, set_names: Sequence[str], prompts: Sequence[EvalPrompt],
                   name: str) -> None:
  """Raises ValueError if the evaluation data overlaps what the template was written from."""
  used = [s for s in set_names if s in template.sources]
  if used:
    raise ValueError(f"template {name!r} was written from {', '.join(used)} (its 'sources'); "
                     "evaluate it on other sets")
  texts = [_norm(t) for t in template_texts(template)]
  for p in prompts:
    needle = _norm(p.prompt)
    if any(needle in t for t in texts):
      raise ValueError(f"template {name!r} contains evaluation prompt {p.source}/{p.id} "
                       f"({p.prompt[:60]!r}) in its preamble or examples")


def render_prompt(template: Template | None, prompt: EvalPrompt, route_by: str) -> str:
  """The model input for one evaluation prompt."""
  if template is None:
    return prompt.prompt
  if isinstance(template, DynamicTemplate):
    chosen = (template.select_from(prompt.tags) if route_by == "tag"
              else template.select(prompt.label))
    return chosen.prompt(prompt.prompt)
  return template.prompt(prompt.prompt)


def answer_rendered(sampler: Sampler, template: Template | None, prompts: Sequence[EvalPrompt],
                    route_by: str, *, max_new_tokens: int, batch_size: int,
                    sampling: SamplingParams, seed: int
                    ) -> tuple[list[AnswerRecord], generation.GenerationStats]:
  """Answers `prompts` through `template`, the records holding the raw prompts.

  Templates are rendered here (a dynamic one needs each prompt's tags), the sampler (which
  has no template) sees the finished text, and the records get the raw prompts back: scorers
  match sets by them.
  """
  rendered = [dataclasses.replace(p, prompt=render_prompt(template, p, route_by))
              for p in prompts]
  records, stats = generation.generate_answers(
      sampler, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size,
      sampling=sampling, rng=jax.random.key(seed))
  return [dataclasses.replace(r, prompt=p.prompt) for r, p in zip(records, prompts)], stats


def comparison_table(runs: dict[str, summary.RunSummary]) -> tables.Table:
  """Per set (then pooled): refusal rate and harmfulness without and with the template."""
  base, tmpl = runs["baseline"], runs["template"]

  def diff(a, b):
    return None if a is None or b is None else b - a

  rows = []
  for name, b in base.sets.items():
    t = tmpl.sets[name]
    rows.append([name, b.n, b.refusal_rate, t.refusal_rate, diff(b.refusal_rate, t.refusal_rate),
                 b.harmfulness, t.harmfulness, diff(b.harmfulness, t.harmfulness)])
  for label, attr in (("unsafe prompts (pooled)", "unsafe_refusal_rate"),
                      ("XSTest safe (false refusal)", "false_refusal_rate")):
    a, c = getattr(base, attr), getattr(tmpl, attr)
    if a is not None or c is not None:
      rows.append([label, None, a, c, diff(a, c), None, None, None])
  return tables.Table(["set", "n", "refusal without %", "refusal with %", "change %",
                       "harmfulness without", "harmfulness with", "harmfulness change"], rows)


def write_comparison(workdir: pathlib.Path, table: tables.Table, title: str, num_prompts: int,
                     max_new_tokens: int) -> None:
  """workdir/comparison.md and comparison.json."""
  atomic.write_text(
      workdir / "comparison.md",
      f"# {title}\n\nSame model, prompts and decoding; only the prompt template differs. "
      f"{num_prompts} prompts, {max_new_tokens} new tokens at most.\n\n"
      f"{table.to_markdown()}\n")
  atomic.write_text(workdir / "comparison.json",
                    json.dumps({"title": title, "table": table.to_json()}, indent=2) + "\n")
