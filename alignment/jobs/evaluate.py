"""Job `evaluate`: answer the safety evaluation sets, score the answers, write the report.

Model: `config.model` (+ `config.adapters`), or the model and adapters of the SFT run in
`config.run_dir`. Every set in `config.sets` is answered through the KV-cache sampler (greedy
by default, Alpaca template by default), then scored: refusal always, harmfulness and
helpfulness when `config.scoring` names saved reward models. Writes to `workdir`:
config.json, answers.jsonl (one AnswerRecord per prompt, scores included), report.md /
report.json (per-set table with XSTest rates) and result.json (written last, so a sweep can
tell a finished evaluation).

Red-teaming (`config.attacks`, docs/ATTACKS.md; `alignment.evaluation.red_team`): each named
vector rewrites the unsafe prompts of `config.attack_sets`; the answers to the rewrites are
stored in answers.jsonl with the vector's name in `attack`, judged against the original prompt
and reported per vector beside the baseline answers (refusal, harmful rate, attack success).

`config.quantize` ('int8' | 'int4') round-trips the loaded weights (adapters merged) through
that integer format before sampling, to evaluate what a quantized deployment would answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import ml_collections

from alignment.answers.records import ANSWERS_FILE, RESULT_FILE, write_answers
from alignment.data import sources
from alignment.evaluation import generation, red_team, report
from alignment.evaluation.attack_summary import HARM_THRESHOLD, summarize_attacks
from alignment.evaluation.model_source import (check_adapters, load_params, resolve_model,
                                               template_name)
from alignment.evaluation.sets import check_limits, load_prompts, parse_sets
from alignment.evaluation.summary import summarize_run
from alignment.files import atomic
from alignment.jobs import common
from alignment.prompts import template_or_none
from alignment.quantization import check_round_trip
from alignment.reward.scorer import build_scorers, check_scoring
from alignment.sampling import Sampler, sample_config
from alignment.training import run_lock

log = logging.getLogger(__name__)


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # Everything cheap is checked before the slow model load.
  names = parse_sets(config.sets)
  set_names = [sources.source_name(n) for n in names]  # a user's file: its stem
  check_limits(config.limits)
  if config.template:
    template_or_none(config.template)  # a misspelt name fails before anything else
  sampling = sample_config.sampling_params(config)
  check_scoring(config.scoring)
  vectors, attack_sets = red_team.parse_attack_config(config.attacks, config.attack_sets,
                                                      set_names)
  check_round_trip(config.quantize)
  prompts = load_prompts(names, common.data_dir(config), config.max_prompts_per_set,
                         dict(config.limits), config.sample_seed, config.get("columns", ""))
  targets = red_team.attacked_prompts(prompts, attack_sets) if vectors else []
  source = resolve_model(config.model, config.adapters, config.run_dir)
  template = template_or_none(template_name(config.template, source))
  check_adapters(source)
  workdir = common.open_workdir(config)

  start = time.perf_counter()
  cfg, params, tokenizer = load_params(source, config.quantize)
  load_seconds = time.perf_counter() - start
  log.info("loaded %s in %.1f s", source.describe(config.quantize), load_seconds)
  draw = dict(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
              sampling=sampling)
  records, stats = generation.generate_answers(
      Sampler(cfg, params, tokenizer, template=template), prompts, **draw,
      rng=jax.random.key(config.seed),
      on_batch=generation.AnswerProgress(len(prompts), config.batch_size))
  log.info("%d answers, %d tokens in %.1f s (%.1f tokens/s, compilation included)",
           stats.prompts, stats.generated_tokens, stats.seconds, stats.tokens_per_second)
  attacked, attack_stats = red_team.answer_attacks(cfg, params, tokenizer, template, targets,
                                                   vectors, **draw, seed=config.seed)
  records += attacked
  answers_path = write_answers(workdir / ANSWERS_FILE, records)  # kept even if scoring fails

  start = time.perf_counter()
  named = build_scorers(config.scoring)
  records = red_team.score_records(records, named, {(p.source, p.id): p.prompt for p in prompts})
  score_seconds = time.perf_counter() - start
  write_answers(answers_path, records)
  summary = summarize_run(records)
  # The same cut either way: -r > 0 iff 1 - sigmoid(r) > 0.5.
  threshold = HARM_THRESHOLD if config.scoring.harmfulness_kind == "probability" else 0.0
  attack_summary = summarize_attacks(records, threshold)
  paths = report.write_run_report(workdir, summary, attacks=attack_summary,
                                  title=f"Evaluation of {source.describe(config.quantize)}")
  result = {
      "answers": str(answers_path), "report": {k: str(v) for k, v in paths.items()},
      "sets": {name: summary.sets[name].n for name in set_names if name in summary.sets},
      "scorers": list(named), "run_dir": config.run_dir, "adapters": source.adapters,
      "template": template_name(config.template, source),
      "max_new_tokens": config.max_new_tokens, "generation": stats.to_json(),
      "load_seconds": load_seconds, "score_seconds": score_seconds,
      "unsafe_refusal_rate": summary.unsafe_refusal_rate,
      "false_refusal_rate": summary.false_refusal_rate, "quantize": config.quantize,
  }
  log.info("unsafe refusal %s, XSTest false refusal %s; report in %s",
           summary.unsafe_refusal_rate, summary.false_refusal_rate, paths["markdown"])
  if attack_summary is not None:
    result.update(red_team.attack_results(attack_summary, attack_stats))
  atomic.write_json(workdir / RESULT_FILE, result)
  return {"records": records, "summary": summary, "stats": stats, "paths": paths,
          "workdir": workdir, "attacks": attack_summary}
