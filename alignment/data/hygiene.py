"""Training-data hygiene: the steps run in order, and the report of what each removed.

`clean` runs exact and near-duplicate removal (`duplicates.py`) and evaluation-overlap removal
(`eval_overlap.py`), and measures the pool's coverage (`coverage.py`) before and after;
`write_report` writes the report as JSON and Markdown. The command line is
`python -m experiments.data_hygiene`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from alignment.data.coverage import coverage, coverage_markdown
from alignment.data.duplicates import exact_dedup, near_dedup
from alignment.data.eval_overlap import remove_eval_overlap
from alignment.data.hygiene_step import HygieneConfig, StepReport, step_markdown
from alignment.data.records import EvalPrompt, InstructionExample


@dataclasses.dataclass
class HygieneReport:
  """Every step's report, the pool's coverage before and after, and the knobs used."""

  steps: list[StepReport]
  coverage_before: dict[str, Any]
  coverage_after: dict[str, Any]
  config: dict[str, Any]

  def to_dict(self) -> dict[str, Any]:
    return {"config": self.config, "steps": [s.to_dict() for s in self.steps],
            "coverage_before": self.coverage_before, "coverage_after": self.coverage_after}

  def to_markdown(self) -> str:
    parts = ["# Data hygiene report", ""]
    parts += [step_markdown(s) for s in self.steps]
    parts += [coverage_markdown(self.coverage_before, "Coverage before"),
              coverage_markdown(self.coverage_after, "Coverage after")]
    return "\n".join(parts)


STEPS = ("exact_dedup", "near_dedup", "eval_overlap")


def clean(examples: Sequence[InstructionExample], eval_prompts: Sequence[EvalPrompt] = (),
          cfg: HygieneConfig = HygieneConfig(), steps: Sequence[str] = STEPS
          ) -> tuple[list[InstructionExample], HygieneReport]:
  """Runs the chosen steps in order; the report counts every removal."""
  unknown = [s for s in steps if s not in STEPS]
  if unknown:
    raise ValueError(f"unknown hygiene step(s) {unknown}; known: {', '.join(STEPS)}")
  kept = list(examples)
  reports = []
  for step in steps:
    if step == "exact_dedup":
      kept, rep = exact_dedup(kept, cfg)
    elif step == "near_dedup":
      kept, rep = near_dedup(kept, cfg)
    else:
      kept, rep = remove_eval_overlap(kept, eval_prompts, cfg)
    reports.append(rep)
  return kept, HygieneReport(reports, coverage(examples), coverage(kept),
                             dataclasses.asdict(cfg))


def write_report(report: HygieneReport, out_dir: str | pathlib.Path) -> tuple[pathlib.Path, ...]:
  """hygiene_report.json and hygiene_report.md in `out_dir`; returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  js, md = out / "hygiene_report.json", out / "hygiene_report.md"
  js.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
  md.write_text(report.to_markdown())
  return js, md
