"""Safety mixtures: N base instructions plus K safety examples, in a chosen prompt format.

The research knobs of Bianchi et al. (2023): how many safety examples are added to a 20k Alpaca
base (0, 100, 300, 500, 1000, 1500, 2000), whether they are phrased as instructions (as
published) or questions (`question_form.py`), and which prompt template (and optional safety
preamble) the model is trained with.

Sampling is deterministic and nested: the seed is split into independent streams for the base
subset, the safety order and the final shuffle, so with one seed every K uses the *same* base
subset and the K safety examples are the first K of one fixed permutation (the 100 are inside the
300). The same config gives the same mixture byte for byte (`mixture_sha256`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignment.data import hygiene, question_form, sources
from alignment.data.hygiene_step import HygieneConfig
from alignment.data.records import InstructionExample
from alignment.prompts.templates import PromptTemplate, get_template

PAPER_SAFETY_COUNTS = (0, 100, 300, 500, 1000, 1500, 2000)
PROMPT_FORMATS = ("instruction", "question")


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
  """One training mixture."""

  base_source: str = "alpaca"  # a source name or a user's file (sources.load)
  num_base: int | None = 20_000  # None: the whole base set
  safety_source: str = "safety_instructions"  # likewise
  columns: str = ""  # user files: "file_column:our_column,..." renamed before format detection
  num_safety: int = 0  # K; ignored when safety_fraction is set
  safety_fraction: float | None = None  # K / (N + K), rounded to the nearest whole example
  safety_format: str = "instruction"  # or "question"
  template: str = "alpaca"  # a name known to alignment.prompts.templates
  system_prompt: str = ""  # optional safety preamble prepended by the template
  seed: int = 0
  shuffle: bool = True
  # Hygiene on both pools before sampling (so N and K stay exact); counts go in the report.
  dedup: bool = False
  remove_eval_overlap: bool = False
  eval_sources: tuple[str, ...] = sources.EVAL_SOURCES
  hygiene: HygieneConfig = HygieneConfig()

  def __post_init__(self):
    if self.safety_format not in PROMPT_FORMATS:
      raise ValueError(f"safety_format must be one of {PROMPT_FORMATS}, got "
                       f"{self.safety_format!r}")
    if self.num_base is not None and self.num_base < 0:
      raise ValueError(f"num_base must be >= 0, got {self.num_base}")
    if self.num_safety < 0:
      raise ValueError(f"num_safety must be >= 0, got {self.num_safety}")
    if self.safety_fraction is not None and not 0.0 <= self.safety_fraction < 1.0:
      raise ValueError(f"safety_fraction must be in [0, 1), got {self.safety_fraction}")
    get_template(self.template)  # fails early on an unknown name
    for name in (self.base_source, self.safety_source):
      sources.check_name(name)  # stored, derived (e.g. sources.HARMFUL_COMPLIANCE) or a file
    base, safety = (sources.source_name(n) for n in (self.base_source, self.safety_source))
    if base == safety and self.base_source != self.safety_source:
      # Records are told apart by source name (held-out examples are base ones).
      raise ValueError(f"base_source {self.base_source!r} and safety_source "
                       f"{self.safety_source!r} both read as source {base!r}; rename a file")
    for name in self.eval_sources:
      sources.get_source(name)


@dataclasses.dataclass
class MixtureReport:
  """What went into a mixture, counted."""

  config: dict[str, Any]
  base_available: int
  safety_available: int
  num_base: int
  num_safety: int
  safety_fraction: float
  by_source: dict[str, int]
  question_rules: dict[str, int]
  hygiene: list[dict[str, Any]]
  sha256: str

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_markdown(self) -> str:
    lines = ["# Mixture", "", f"- base: {self.num_base} of {self.base_available} "
             f"({self.config['base_source']})",
             f"- safety: {self.num_safety} of {self.safety_available} "
             f"({self.config['safety_source']}, {self.config['safety_format']} form); "
             f"fraction {self.safety_fraction:.4f}",
             f"- template: {self.config['template']}"
             + (" with system prompt" if self.config["system_prompt"] else ""),
             f"- seed {self.config['seed']}; sha256 `{self.sha256}`"]
    if self.question_rules:
      lines.append("- question rules: " + ", ".join(f"{k} {v}" for k, v in
                                                     self.question_rules.items()))
    for h in self.hygiene:
      lines.append(f"- hygiene {h['pool']}/{h['step']}: {h['before']} -> {h['after']}")
    return "\n".join(lines) + "\n"


def num_safety_examples(cfg: MixtureConfig, num_base: int) -> int:
  """K from the config: explicit, or from the fraction K / (N + K)."""
  if cfg.safety_fraction is None:
    return cfg.num_safety
  return int(round(cfg.safety_fraction * num_base / (1.0 - cfg.safety_fraction)))


def as_question(ex: InstructionExample) -> tuple[InstructionExample, str]:
  r = question_form.rewrite(ex.instruction)
  return dataclasses.replace(ex, instruction=r.text, prompt_format="question"), r.rule


def format_example(ex: InstructionExample, template: PromptTemplate | str,
                   system_prompt: str = "") -> tuple[str, str]:
  """(prompt, target) text for training: the template's prompt and the output plus suffix."""
  if isinstance(template, str):
    template = get_template(template)
  prompt = template.format(ex.instruction, ex.input, system_prompt)
  return prompt, ex.output + template.response_suffix


def serialize(examples: Sequence[InstructionExample], template: PromptTemplate | str,
              system_prompt: str = "") -> bytes:
  """Canonical JSON lines of the records and their formatted text (what the hash covers)."""
  lines = []
  for ex in examples:
    prompt, target = format_example(ex, template, system_prompt)
    row = dataclasses.asdict(ex)
    row.update(prompt=prompt, target=target)
    lines.append(json.dumps(row, sort_keys=True, ensure_ascii=False))
  return ("\n".join(lines) + "\n").encode("utf-8")


def mixture_sha256(examples: Sequence[InstructionExample], cfg: MixtureConfig) -> str:
  return hashlib.sha256(serialize(examples, cfg.template, cfg.system_prompt)).hexdigest()


def _clean_pool(pool: list[InstructionExample], name: str, cfg: MixtureConfig, evals: list,
                log: list[dict[str, Any]]) -> list[InstructionExample]:
  steps = (["exact_dedup", "near_dedup"] if cfg.dedup else []) + (
      ["eval_overlap"] if cfg.remove_eval_overlap else [])
  if not steps:
    return pool
  kept, report = hygiene.clean(pool, evals, cfg.hygiene, steps)
  for step in report.steps:
    log.append({"pool": name, **{k: v for k, v in step.to_dict().items() if k != "examples"}})
  return kept


def drop_empty_outputs(pool: list[InstructionExample], name: str,
                       log: list[dict[str, Any]]) -> list[InstructionExample]:
  """The pool without records whose output is blank (nothing to train on), counted in `log`.

  Always applied, before sampling, so N and K stay exact: Alpaca has 28 such records and a
  20k sample would otherwise draw one and stop the run at tokenization.
  """
  kept = [ex for ex in pool if ex.output.strip()]
  if len(kept) != len(pool):
    log.append({"pool": name, "step": "empty_output", "before": len(pool),
                "after": len(kept), "removed": len(pool) - len(kept)})
  return kept


def build_mixture(cfg: MixtureConfig, data_dir: str | os.PathLike | None = None, *,
                  pools: dict[str, Sequence[Any]] | None = None
                  ) -> tuple[list[InstructionExample], MixtureReport]:
  """The mixture's examples (safety ones in the configured format) and its report.

  `pools` maps source names to already loaded records, so sweeps over K (or tests) read the
  52k-row Alpaca file once; sources missing from it are loaded from `data_dir`.
  """
  pools = pools or {}

  def load(name: str, expect: type | None = None) -> list[Any]:
    if name in pools:
      return list(pools[name])
    return sources.load(name, data_dir, columns=cfg.columns, expect=expect)

  hygiene_log: list[dict[str, Any]] = []
  base_pool = drop_empty_outputs(load(cfg.base_source, InstructionExample), "base", hygiene_log)
  safety_pool = drop_empty_outputs(load(cfg.safety_source, InstructionExample), "safety",
                                   hygiene_log)
  if cfg.dedup or cfg.remove_eval_overlap:
    evals = ([ep for name in cfg.eval_sources for ep in load(name)]
             if cfg.remove_eval_overlap else [])
    base_pool = _clean_pool(base_pool, "base", cfg, evals, hygiene_log)
    safety_pool = _clean_pool(safety_pool, "safety", cfg, evals, hygiene_log)

  n = len(base_pool) if cfg.num_base is None else cfg.num_base
  if n > len(base_pool):
    raise ValueError(f"num_base={n} but {cfg.base_source!r} has only {len(base_pool)} examples")
  k = num_safety_examples(cfg, n)
  if k > len(safety_pool):
    raise ValueError(f"{k} safety examples requested but {cfg.safety_source!r} has only "
                     f"{len(safety_pool)}")

  base_seq, safety_seq, order_seq = np.random.SeedSequence(cfg.seed).spawn(3)
  base_idx = np.sort(np.random.default_rng(base_seq).permutation(len(base_pool))[:n])
  safety_idx = np.random.default_rng(safety_seq).permutation(len(safety_pool))[:k]
  rules: collections.Counter[str] = collections.Counter()
  safety = []
  for i in safety_idx:
    ex = safety_pool[i]
    if cfg.safety_format == "question":
      ex, rule = as_question(ex)
      rules[rule] += 1
    safety.append(ex)
  examples = [base_pool[i] for i in base_idx] + safety
  if cfg.shuffle:
    order = np.random.default_rng(order_seq).permutation(len(examples))
    examples = [examples[i] for i in order]

  config = dataclasses.asdict(cfg)
  config["eval_sources"] = list(cfg.eval_sources)
  report = MixtureReport(
      config=config, base_available=len(base_pool), safety_available=len(safety_pool),
      num_base=n, num_safety=k, safety_fraction=k / max(n + k, 1),
      by_source=dict(collections.Counter(ex.source for ex in examples)),
      question_rules=dict(rules.most_common()), hygiene=hygiene_log,
      sha256=mixture_sha256(examples, cfg))
  return examples, report


def split_held_out(examples: Sequence[InstructionExample], base_source: str, count: int
                   ) -> tuple[list[InstructionExample], list[InstructionExample]]:
  """(training examples, `count` held-out base examples) of a mixture built with `count`
  extra base examples, so N and K of the training part stay exactly as configured.

  Held-out examples are chosen by a hash of their text, not by position in the shuffled
  mixture, so with one seed every K holds out the same examples (held-out loss is then
  comparable across K).
  """
  base_name = sources.source_name(base_source)  # a user's file: its stem
  base = sorted((i for i, e in enumerate(examples) if e.source == base_name),
                key=lambda i: _text_digest(examples[i]))[:count]
  held = set(base)
  return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in base]


def _text_digest(example: InstructionExample) -> str:
  text = "\x1f".join((example.instruction, example.input, example.output))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()
