"""Job `evaluate`: answer the safety evaluation sets, score the answers, write the report.

Model: `config.model` (+ `config.adapters`), or the model and adapters of the SFT run in
`config.run_dir`. Every set in `config.sets` is answered through the KV-cache sampler (greedy
by default, Alpaca template by default), then scored: refusal always, harmfulness and
helpfulness when `config.scoring` names saved reward models. Writes to `workdir`:
config.json, answers.jsonl (one AnswerRecord per prompt, scores included), report.md /
report.json (per-set table with XSTest rates) and result.json (written last, so a sweep can
tell a finished evaluation).

Red-teaming (`config.attacks`, docs/ATTACKS.md): each named vector rewrites the unsafe prompts
of `config.attack_sets` (`alignment.evaluation.attacks`); the rewritten copies are answered
after the baseline, stored in answers.jsonl with their vector's name in `attack`, scored like
the rest (reward models judge an attacked answer against the *original* prompt, the request
the attack tries to smuggle through), and reported per vector next to the baseline answers to
the same prompts (refusal, harmfulness, harmful rate, attack success rate).

`config.quantize` ('int8' | 'int4') round-trips the loaded weights (adapters merged) through
that integer format before sampling, to evaluate what a quantized deployment would answer.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from alignment import schema
from alignment.answers.records import ANSWERS_FILE, RESULT_FILE, AnswerRecord, write_answers
from alignment.answers.scorer import Scorer
from alignment.data import sources
from alignment.data.records import EvalPrompt
from alignment.evaluation import attacks as attacks_lib
from alignment.evaluation import generation, report, scorers
from alignment.evaluation.attack_summary import HARM_THRESHOLD, summarize_attacks
from alignment.evaluation import model_source
from alignment.evaluation.model_source import load_params, resolve_model
from alignment.evaluation.sets import load_prompts, parse_sets
from alignment.evaluation.summary import summarize_run
from alignment.prompts import template_or_none
from alignment.prompts.templates import PromptTemplate
from alignment.quantization import quantize_params
from alignment.reward.scorer import build_scorers
from alignment.sampling import Sampler, SamplingParams, sample_config
from alignment.files import atomic
from alignment.training import run_lock

log = logging.getLogger(__name__)

QUANTIZE_SCHEMES = ("int8", "int4")  # config.quantize; '' = full precision
UNSAFE = "unsafe"  # config.attack_sets: every evaluated set's prompts labelled unsafe


def parse_attack_config(config: ml_collections.ConfigDict, sets: Sequence[str]
                        ) -> tuple[list[str], list[str]]:
  """(attack vector names, sets whose unsafe prompts get attacked) from the config.

  `attack_sets` is 'unsafe' (every evaluated set: the paper's unsafe sets and XSTest's unsafe
  half) or comma-separated names among `config.sets`. Either way only prompts labelled unsafe
  are attacked: ASR needs prompts a model should refuse.
  """
  try:
    vectors = attacks_lib.parse_attacks(config.attacks)
  except ValueError as e:
    raise ValueError(f"config.attacks: {e}") from None
  spec = config.attack_sets.strip()
  if spec == UNSAFE:
    return vectors, list(sets)
  names = list(schema.names(spec))
  if not names:
    raise ValueError(f"config.attack_sets: empty; give {UNSAFE!r} or set names from "
                     "config.sets")
  for name in names:
    if name not in sets:
      raise ValueError(f"config.attack_sets: {name!r} is not among the evaluated sets "
                       f"(config.sets: {', '.join(sets)})")
  return vectors, names


def attacked_prompts(prompts: Sequence[EvalPrompt], attack_sets: Sequence[str]
                     ) -> list[EvalPrompt]:
  """The prompts labelled unsafe in `attack_sets`; an error if there are none."""
  out = [p for p in prompts if p.source in attack_sets and p.label == UNSAFE]
  if not out:
    raise ValueError(f"config.attack_sets: no prompt labelled unsafe in "
                     f"{', '.join(attack_sets)}; attacks are measured on unsafe prompts")
  return out


def template_name(config: ml_collections.ConfigDict, source: model_source.ModelSource) -> str:
  """`config.template`, or if empty: the SFT run's data.template, else 'alpaca' (the paper's)."""
  if config.template:
    return config.template
  run_template = ((source.run_config or {}).get("data") or {}).get("template")
  return run_template or "alpaca"


def check_quantize(scheme: str) -> None:
  """A ValueError for an unknown scheme, before the slow model load."""
  if scheme and scheme not in QUANTIZE_SCHEMES:
    raise ValueError(f"config.quantize: unknown scheme {scheme!r}; expected '' (none) or one of "
                     f"{', '.join(QUANTIZE_SCHEMES)}")


def quantize(params, scheme: str):
  """`params` round-tripped through `scheme` ('' returns them unchanged)."""
  return quantize_params(params, scheme) if scheme else params


def score_records(records: Sequence[AnswerRecord], named: dict[str, Scorer],
                  originals: dict[tuple[str, str], str]) -> list[AnswerRecord]:
  """Scores every record; an attacked one is judged against its original prompt.

  A reward model asked about a leetspeak or role-play prompt would rate the wrapper; the
  question is whether the answer serves the request underneath. The records keep the prompt
  the model saw.
  """
  view = [dataclasses.replace(r, prompt=originals[(r.set, r.id)]) if r.attack else r
          for r in records]
  scored = scorers.score_answers(view, named)
  return [dataclasses.replace(s, prompt=r.prompt) for r, s in zip(records, scored)]


def answer_attacks(cfg, params, tokenizer, template: PromptTemplate | None,
                   prompts: Sequence[EvalPrompt], vectors: Sequence[str],
                   config: ml_collections.ConfigDict, sampling: SamplingParams
                   ) -> tuple[list[AnswerRecord], dict[str, generation.GenerationStats]]:
  """Each vector's answers to its rewrites of `prompts` (records carry the vector's name).

  A vector with a response prefix (prefix injection) samples through the template with the
  prefix after its response marker, and its answer is stored as prefix + continuation.
  """
  records, stats = [], {}
  for k, name in enumerate(vectors):
    attack = attacks_lib.get_attack(name)
    sampler = Sampler(cfg, params, tokenizer,
                      template=attacks_lib.prefixed_template(template, attack.response_prefix))
    rewritten = [attacks_lib.apply(name, p) for p in prompts]
    answered, stats[name] = generation.generate_answers(
        sampler, rewritten, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
        sampling=sampling, rng=jax.random.fold_in(jax.random.key(config.seed), k + 1))
    records += [dataclasses.replace(r, attack=name, answer=attack.response_prefix + r.answer)
                for r in answered]
    log.info("attack %s: %d answers in %.1f s", name, len(answered), stats[name].seconds)
  return records, stats


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # Everything cheap is checked before the slow model load.
  names = parse_sets(config.sets)
  set_names = [sources.source_name(n) for n in names]  # a user's file: its stem
  for name, limit in config.limits.items():
    if limit < -1:
      raise ValueError(f"config.limits.{name}={limit}: use -1 (max_prompts_per_set), 0 (all) "
                       "or a positive count")
  if config.template:
    template_or_none(config.template)  # a misspelt name fails before anything else
  sampling = sample_config.sampling_params(config)
  if config.scoring.harmfulness_kind not in ("probability", "negative_reward"):
    raise ValueError(f"config.scoring.harmfulness_kind: unknown kind "
                     f"{config.scoring.harmfulness_kind!r}; expected 'probability' or "
                     "'negative_reward'")
  vectors, attack_sets = parse_attack_config(config, set_names)
  check_quantize(config.quantize)
  for field in ("harmfulness_rm", "helpfulness_rm"):
    rm_dir = config.scoring[field]
    if rm_dir and not (pathlib.Path(rm_dir) / "reward_model.json").is_file():
      raise FileNotFoundError(f"config.scoring.{field}: {rm_dir} is not a saved reward model "
                              "(no reward_model.json; the reward job writes <workdir>/"
                              "reward_model)")
  data_dir = config.get("data_dir") or None
  prompts = load_prompts(names, data_dir, config.max_prompts_per_set, dict(config.limits),
                         config.sample_seed, config.get("columns", ""))
  targets = attacked_prompts(prompts, attack_sets) if vectors else []
  source = resolve_model(config.model, config.adapters, config.run_dir)
  template = template_or_none(template_name(config, source))
  if source.adapters and not pathlib.Path(source.adapters).is_file():
    raise FileNotFoundError(f"config.adapters: no LoRA adapter file at {source.adapters}")

  workdir = pathlib.Path(config.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run_lock.hold(workdir)  # one process per workdir, before any write
  atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))

  start = time.perf_counter()
  cfg, params, tokenizer = load_params(source)
  params = quantize(params, config.quantize)
  load_seconds = time.perf_counter() - start
  log.info("loaded %s%s%s in %.1f s", source.model.get("checkpoint"),
           f" + {source.adapters}" if source.adapters else "",
           f", {config.quantize} round trip" if config.quantize else "", load_seconds)
  sampler = Sampler(cfg, params, tokenizer, template=template)
  records, stats = generation.generate_answers(
      sampler, prompts, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
      sampling=sampling, rng=jax.random.key(config.seed),
      on_batch=generation.AnswerProgress(len(prompts), config.batch_size))
  log.info("%d answers, %d tokens in %.1f s (%.1f tokens/s, compilation included)",
           stats.prompts, stats.generated_tokens, stats.seconds, stats.tokens_per_second)
  attack_stats = {}
  if vectors:
    attacked, attack_stats = answer_attacks(cfg, params, tokenizer, template, targets, vectors,
                                            config, sampling)
    records += attacked
  answers_path = write_answers(workdir / ANSWERS_FILE, records)  # kept even if scoring fails

  start = time.perf_counter()
  named = build_scorers(config.scoring)
  records = score_records(records, named, {(p.source, p.id): p.prompt for p in prompts})
  score_seconds = time.perf_counter() - start
  write_answers(answers_path, records)
  summary = summarize_run(records)
  # The same cut either way: -r > 0 iff 1 - sigmoid(r) > 0.5.
  threshold = (HARM_THRESHOLD if config.scoring.harmfulness_kind == "probability"
               else 0.0)
  attack_summary = summarize_attacks(records, threshold)
  title = f"Evaluation of {config.run_dir or source.model.get('checkpoint')}"
  if source.adapters:
    title += f" + {source.adapters}"
  if config.quantize:
    title += f" ({config.quantize})"
  paths = report.write_run_report(workdir, summary, title=title, attacks=attack_summary)
  result = {
      "answers": str(answers_path), "report": {k: str(v) for k, v in paths.items()},
      "sets": {name: summary.sets[name].n for name in set_names if name in summary.sets},
      "scorers": list(named), "run_dir": config.run_dir, "adapters": source.adapters,
      "template": template_name(config, source), "max_new_tokens": config.max_new_tokens,
      "generation": {**dataclasses.asdict(stats), "tokens_per_second": stats.tokens_per_second},
      "load_seconds": load_seconds, "score_seconds": score_seconds,
      "unsafe_refusal_rate": summary.unsafe_refusal_rate,
      "false_refusal_rate": summary.false_refusal_rate,
      "quantize": config.quantize,
  }
  if attack_summary is not None:
    result["attacks"] = {name: dataclasses.asdict(row)
                         for name, row in attack_summary.rows.items()}
    result["attack_harm_basis"] = attack_summary.harm_basis
    result["attack_generation"] = {
        name: {**dataclasses.asdict(st), "tokens_per_second": st.tokens_per_second}
        for name, st in attack_stats.items()}
  atomic.write_json(workdir / RESULT_FILE, result)
  log.info("unsafe refusal %s, XSTest false refusal %s; report in %s",
           summary.unsafe_refusal_rate, summary.false_refusal_rate, paths["markdown"])
  if attack_summary is not None:
    for name, row in attack_summary.rows.items():
      log.info("%s: n=%d refusal %s harmful %s ASR %s", name, row.n, row.refusal_rate,
               row.harmful_rate, row.asr)
  return {"records": records, "summary": summary, "stats": stats, "paths": paths,
          "workdir": workdir, "attacks": attack_summary}
