"""What every data-hygiene step shares: its knobs, its report, and what counts as "the same".

Each step (`duplicates`, `eval_overlap`) returns the kept examples and a `StepReport`: how many
were removed, by source, with examples of what and why. Texts are compared after `normalize`
(NFKC, case-folded, punctuation to spaces, whitespace collapsed).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from alignment.data.records import InstructionExample

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclasses.dataclass(frozen=True)
class HygieneConfig:
  """Knobs of the hygiene steps (`duplicates.py` and `eval_overlap.py` say what each means)."""

  dedup_fields: tuple[str, ...] = ("instruction", "input")  # the text that identifies an example
  near_dup_threshold: float = 0.8  # shingle Jaccard at or above which two texts are duplicates
  shingle_size: int = 5  # bytes per shingle, 1..8
  num_perm: int = 128
  lsh_bands: int = 32  # must divide num_perm
  minhash_seed: int = 0
  overlap_ngram: int = 13
  min_match_words: int = 3
  overlap_fields: tuple[str, ...] = ("instruction", "input")
  max_report_examples: int = 10

  def __post_init__(self):
    if not 1 <= self.shingle_size <= 8:
      raise ValueError(f"shingle_size must be in 1..8, got {self.shingle_size}")
    if self.num_perm % self.lsh_bands:
      raise ValueError(f"lsh_bands ({self.lsh_bands}) must divide num_perm ({self.num_perm})")
    if not 0.0 < self.near_dup_threshold <= 1.0:
      raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
    if self.overlap_ngram < 1 or self.min_match_words < 1:
      raise ValueError("overlap_ngram and min_match_words must be positive")


@dataclasses.dataclass
class StepReport:
  """What one hygiene step removed, and why, with a few examples."""

  step: str
  before: int
  removed: int
  removed_by_source: dict[str, int]
  examples: list[dict[str, Any]]
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def after(self) -> int:
    return self.before - self.removed

  def to_dict(self) -> dict[str, Any]:
    return {"step": self.step, "before": self.before, "removed": self.removed,
            "after": self.after, "removed_by_source": self.removed_by_source,
            "details": self.details, "examples": self.examples}


def normalize(text: str) -> str:
  """Case-folded, NFKC, punctuation as spaces, whitespace collapsed: what counts as 'the same'."""
  return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def example_text(ex: InstructionExample, fields: Sequence[str]) -> str:
  """The example's non-empty `fields`, one per line: the text a step compares."""
  return "\n".join(str(getattr(ex, f)) for f in fields if getattr(ex, f))


def step_report(step: str, examples: Sequence[InstructionExample],
                removed: dict[int, dict[str, Any]], cfg: HygieneConfig,
                details: dict[str, Any] | None = None) -> StepReport:
  """The report of a step that removed `removed` (index -> why) from `examples`."""
  by_source = collections.Counter(examples[i].source for i in removed)
  shown = [removed[i] for i in sorted(removed)[:cfg.max_report_examples]]
  return StepReport(step, len(examples), len(removed), dict(sorted(by_source.items())), shown,
                    details or {})


def count_table(counts: dict[str, Any], key: str) -> list[str]:
  """Markdown lines of a two-column table: `key` and its count."""
  rows = [f"| {key} | count |", "|---|---:|"]
  rows += [f"| {k} | {v} |" for k, v in counts.items()]
  return rows


def _clip(text: str, n: int = 160) -> str:
  text = " ".join(text.split())
  return text if len(text) <= n else text[:n - 1] + "…"


def step_markdown(report: StepReport) -> str:
  lines = [f"## {report.step}", "", f"{report.before} -> {report.after} "
           f"({report.removed} removed)", ""]
  if report.removed_by_source:
    lines += count_table(report.removed_by_source, "removed from source") + [""]
  if report.details:
    lines += ["```", json.dumps(report.details, indent=1, ensure_ascii=False), "```", ""]
  for ex in report.examples:
    reason = {k: v for k, v in ex.items() if k not in ("removed", "source")}
    why = "; ".join(f"{k}: {_clip(str(v))}" for k, v in reason.items())
    lines.append(f"- [{ex['source']}] {_clip(ex['removed'])}  \n  ({why})")
  return "\n".join(lines) + "\n"
