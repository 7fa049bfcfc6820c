"""Red-teaming in an evaluation (docs/ATTACKS.md): which prompts are attacked, the model's
answers to each vector's rewrites, and the scoring that judges them.

Each named vector (`evaluation.attacks`) rewrites the unsafe prompts of the attacked sets;
the rewritten copies are answered after the baseline and stored with their vector's name in
`AnswerRecord.attack`. Only prompts labelled unsafe are attacked: the attack success rate
needs prompts a model should refuse. Reward models judge an attacked answer against the
*original* prompt, the request the attack tries to smuggle through.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax

from alignment import schema
from alignment.answers.records import AnswerRecord
from alignment.answers.scorer import Scorer
from alignment.data.records import EvalPrompt
from alignment.evaluation import attacks as attacks_lib
from alignment.evaluation import generation, scorers
from alignment.evaluation.attack_summary import AttackSummary
from alignment.prompts.templates import PromptTemplate
from alignment.sampling import Sampler, SamplingParams

log = logging.getLogger(__name__)

UNSAFE = "unsafe"  # attack_sets: every evaluated set's prompts labelled unsafe


def parse_attack_config(attacks: str | Sequence[str], attack_sets: str | Sequence[str],
                        sets: Sequence[str]) -> tuple[list[str], list[str]]:
  """(attack vector names, sets whose unsafe prompts get attacked).

  `attack_sets` is 'unsafe' (every evaluated set: the paper's unsafe sets and XSTest's unsafe
  half) or names among `sets` (a tuple, or a comma-joined string: `schema.names`).
  """
  try:
    vectors = attacks_lib.parse_attacks(attacks)
  except ValueError as e:
    raise ValueError(f"config.attacks: {e}") from None
  names = list(schema.names(attack_sets))
  if names == [UNSAFE]:
    return vectors, list(sets)
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


def answer_attacks(cfg, params, tokenizer, template: PromptTemplate | None,
                   prompts: Sequence[EvalPrompt], vectors: Sequence[str], *,
                   max_new_tokens: int, batch_size: int, sampling: SamplingParams, seed: int
                   ) -> tuple[list[AnswerRecord], dict[str, generation.GenerationStats]]:
  """Each vector's answers to its rewrites of `prompts` (records carry the vector's name).

  A vector with a response prefix (prefix injection) samples through the template with the
  prefix after its response marker, and its answer is stored as prefix + continuation. Vector
  k draws with key fold_in(key(seed), k + 1); the baseline's is key(seed).
  """
  records, stats = [], {}
  for k, name in enumerate(vectors):
    attack = attacks_lib.get_attack(name)
    sampler = Sampler(cfg, params, tokenizer,
                      template=attacks_lib.prefixed_template(template, attack.response_prefix))
    rewritten = [attacks_lib.apply(name, p) for p in prompts]
    answered, stats[name] = generation.generate_answers(
        sampler, rewritten, max_new_tokens=max_new_tokens, batch_size=batch_size,
        sampling=sampling, rng=jax.random.fold_in(jax.random.key(seed), k + 1))
    records += [dataclasses.replace(r, attack=name, answer=attack.response_prefix + r.answer)
                for r in answered]
    log.info("attack %s: %d answers in %.1f s", name, len(answered), stats[name].seconds)
  return records, stats


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


def attack_results(summary: AttackSummary, stats: dict[str, generation.GenerationStats]
                   ) -> dict[str, Any]:
  """result.json's attack entries: per vector figures, the harm basis, generation stats;
  each row is logged too."""
  for name, row in summary.rows.items():
    log.info("%s: n=%d refusal %s harmful %s ASR %s", name, row.n, row.refusal_rate,
             row.harmful_rate, row.asr)
  return {"attacks": {name: dataclasses.asdict(row) for name, row in summary.rows.items()},
          "attack_harm_basis": summary.harm_basis,
          "attack_generation": {name: st.to_json() for name, st in stats.items()}}
