"""Job `template_eval`: refusal (and harmfulness) with and without a prompt template.

Answers the evaluation sets twice with the same model and decoding, once through the baseline
template (by default the bare prompt in the same chat turns) and once through the template
under test, scores both and writes, in `workdir`:
  baseline/report.{md,json}, template/report.{md,json}   the evaluation report of each run
  answers_baseline.jsonl, answers_template.jsonl         scored AnswerRecords (raw prompts)
  comparison.{md,json}                                   per set: without, with, difference
  result.json                                            written last
A template may only be judged on data it was not written from: a set named in the template's
`sources`, or a prompt in its preamble or examples, stops the job before any model is loaded.
Dynamic templates route by tag or by label (`route_by`; `evaluation.template_comparison`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import ml_collections

from alignment.answers.records import write_answers
from alignment.evaluation import report, scorers, summary
from alignment.evaluation import template_comparison as comparison
from alignment.evaluation.model_source import load_params, resolve_model
from alignment.evaluation.sets import load_prompts, parse_sets
from alignment.files import atomic
from alignment.jobs import common
from alignment.prompts.library import resolve_template
from alignment.reward.scorer import build_scorers
from alignment.sampling import Sampler, sample_config
from alignment.training import run_lock

log = logging.getLogger(__name__)


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  names = parse_sets(config.sets)
  if config.route_by not in comparison.ROUTES:
    raise ValueError(f"config.route_by: {config.route_by!r} is not one of "
                     f"{', '.join(comparison.ROUTES)}")
  try:
    templates = {"baseline": resolve_template(config.baseline, config.template_file),
                 "template": resolve_template(config.template, config.template_file)}
  except KeyError as e:
    raise ValueError(f"config.template/baseline: {e.args[0]}") from None
  if templates["template"] is None:
    raise ValueError("config.template: 'none' leaves nothing to evaluate; name a template")
  sampling = sample_config.sampling_params(config)
  prompts = load_prompts(names, common.data_dir(config), config.max_prompts_per_set,
                         columns=config.get("columns", ""))
  comparison.check_held_out(templates["template"], names, prompts, config.template)

  workdir = common.open_workdir(config)
  source = resolve_model(config.model, config.adapters, config.run_dir)
  start = time.perf_counter()
  cfg, params, tokenizer = load_params(source)
  log.info("loaded %s in %.1f s", source.model.get("checkpoint"), time.perf_counter() - start)
  sampler = Sampler(cfg, params, tokenizer)  # no template: prompts arrive rendered
  named = build_scorers(config.scoring)

  summaries, paths, stats = {}, {}, {}
  for condition in comparison.CONDITIONS:
    records, stats[condition] = comparison.answer_rendered(
        sampler, templates[condition], prompts, config.route_by, sampling=sampling,
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, seed=config.seed)
    records = scorers.score_answers(records, named)
    write_answers(workdir / f"answers_{condition}.jsonl", records)
    summaries[condition] = summary.summarize_run(records)
    paths[condition] = report.write_run_report(
        workdir / condition, summaries[condition],
        title=f"{condition.capitalize()} {config[condition]!r}")
    log.info("%s: %d answers in %.1f s", condition, stats[condition].prompts,
             stats[condition].seconds)

  table = comparison.comparison_table(summaries)
  comparison.write_comparison(workdir, table, f"Template {config.template!r} against "
                              f"{config.baseline!r}", len(prompts), config.max_new_tokens)
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
