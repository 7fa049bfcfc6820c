"""Job `template_eval`: refusal (and harmfulness) with and without a prompt template.

Answers the evaluation sets twice with the same model and decoding, once through the baseline
template (by default the bare prompt in the same chat turns) and once through the template
under test, scores both and writes, in `workdir`:
  baseline/report.{md,json}, template/report.{md,json}   the evaluation report of each run
  answers_baseline.jsonl, answers_template.jsonl         scored AnswerRecords (raw prompts)
  comparison.{md,json}                                   per set: without, with, difference
  result.json                                            written last
A template may only be judged on data it was not written from: a set named in the template's
`sources`, or a prompt that appears in its preamble or examples, stops the job before any
model is loaded. Dynamic templates pick their branch per prompt from its tags
(`route_by='tag'`) or its safe/unsafe label (`route_by='label'`, an oracle: an upper bound on
what a real classifier could do).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from alignment.answers.records import AnswerRecord, write_answers
from alignment.data.records import EvalPrompt
from alignment.evaluation import generation, report, scorers, summary, tables
from alignment.evaluation.model_source import load_params, resolve_model
from alignment.evaluation.sets import load_prompts, parse_sets
from alignment.reward.scorer import build_scorers
from alignment.prompts.library import DynamicTemplate, Template, resolve_template, template_texts
from alignment.sampling import Sampler, SamplingParams, sample_config
from alignment.files import atomic
from alignment.training import run_lock

log = logging.getLogger(__name__)

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


def _answer(sampler: Sampler, template: Template | None, prompts: Sequence[EvalPrompt],
            config: ml_collections.ConfigDict, sampling: SamplingParams
            ) -> tuple[list[AnswerRecord], generation.GenerationStats]:
  # Templates are rendered here (a dynamic one needs each prompt's tags), the sampler sees the
  # finished text, and the records get the raw prompts back: scorers match sets by them.
  rendered = [dataclasses.replace(p, prompt=render_prompt(template, p, config.route_by))
              for p in prompts]
  records, stats = generation.generate_answers(
      sampler, rendered, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
      sampling=sampling, rng=jax.random.key(config.seed))
  return [dataclasses.replace(r, prompt=p.prompt) for r, p in zip(records, prompts)], stats


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  names = parse_sets(config.sets)
  if config.route_by not in ROUTES:
    raise ValueError(f"config.route_by: {config.route_by!r} is not one of {', '.join(ROUTES)}")
  try:
    templates = {"baseline": resolve_template(config.baseline, config.template_file),
                 "template": resolve_template(config.template, config.template_file)}
  except KeyError as e:
    raise ValueError(f"config.template/baseline: {e.args[0]}") from None
  if templates["template"] is None:
    raise ValueError("config.template: 'none' leaves nothing to evaluate; name a template")
  sampling = sample_config.sampling_params(config)
  prompts = load_prompts(names, config.get("data_dir") or None,
                                  config.max_prompts_per_set, columns=config.get("columns", ""))
  check_held_out(templates["template"], names, prompts, config.template)

  workdir = pathlib.Path(config.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run_lock.hold(workdir)  # one process per workdir, before any write
  atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
  source = resolve_model(config.model, config.adapters, config.run_dir)
  start = time.perf_counter()
  cfg, params, tokenizer = load_params(source)
  log.info("loaded %s in %.1f s", source.model.get("checkpoint"), time.perf_counter() - start)
  sampler = Sampler(cfg, params, tokenizer)  # no template: prompts arrive rendered
  named = build_scorers(config.scoring)

  summaries, paths, stats = {}, {}, {}
  for condition in CONDITIONS:
    records, stats[condition] = _answer(sampler, templates[condition], prompts, config,
                                        sampling)
    records = scorers.score_answers(records, named)
    write_answers(workdir / f"answers_{condition}.jsonl", records)
    summaries[condition] = summary.summarize_run(records)
    label = config[condition] if condition == "baseline" else config.template
    paths[condition] = report.write_run_report(
        workdir / condition, summaries[condition],
        title=f"{'Baseline' if condition == 'baseline' else 'Template'} {label!r}")
    log.info("%s: %d answers in %.1f s", condition, stats[condition].prompts,
             stats[condition].seconds)

  table = comparison_table(summaries)
  title = f"Template {config.template!r} against {config.baseline!r}"
  atomic.write_text(
      workdir / "comparison.md",
      f"# {title}\n\nSame model, prompts and decoding; only the prompt template differs. "
      f"{len(prompts)} prompts, {config.max_new_tokens} new tokens at most.\n\n"
      f"{table.to_markdown()}\n")
  atomic.write_text(workdir / "comparison.json",
                    json.dumps({"title": title, "table": table.to_json()}, indent=2) + "\n")
  result = {
      "template": config.template, "baseline": config.baseline,
      "template_file": config.template_file, "sets": names, "prompts": len(prompts),
      "scorers": list(named),
      "reports": {c: {k: str(v) for k, v in p.items()} for c, p in paths.items()},
      "generation": {c: dataclasses.asdict(s) for c, s in stats.items()},
      "unsafe_refusal_rate": {c: s.unsafe_refusal_rate for c, s in summaries.items()},
      "false_refusal_rate": {c: s.false_refusal_rate for c, s in summaries.items()},
  }
  atomic.write_json(workdir / "result.json", result)
  print(table.to_markdown())
  return {"summaries": summaries, "table": table, "workdir": workdir}
