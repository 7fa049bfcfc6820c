"""A labelled set of our own model's answers, and the refusal judge's agreement with it.

The string-match refusal classifier was validated on large chat models' XSTest answers; a
270M model's answers fail differently (echoes of the prompt, lectures instead of answers,
degenerate repetition). This tool draws answers from a sweep for maintainers to label by
reading them, and measures the classifier against those labels.

  # 1. Draw answers (stratified over K, format and evaluation subset) to label:
  python -m experiments.judge_labels sample --sweep_dir=runs/stl_laptop --per_cell=6 \\
      --out=runs/to_label.jsonl
  # 2. Label them (docs/judge/README.md has the rubric), then measure agreement:
  python -m experiments.judge_labels report --labels=docs/judge/labels_v1.jsonl \\
      --out=docs/judge/agreement.md

Each drawn answer gets a split, "tune" or "held_out", from a hash of its key, so the half a
classifier change was tuned on is fixed before anyone looks at the answers.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import pathlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from alignment.data.readers import DataError, read_jsonl, require
from alignment.evaluation import stats
from alignment.judges import refusal
from experiments import reproduction_report

SPLITS = ("tune", "held_out")
LABELS = refusal.LABELS


@dataclasses.dataclass(frozen=True)
class Labelled:
  """One labelled answer of the fixture."""

  key: str  # "<run>/<set>/<id>", unique
  run: str
  num_safety: int
  format: str
  set: str  # evaluation subset (XSTest split by label: xstest_safe / xstest_unsafe)
  prompt: str
  answer: str
  label: str  # one of refusal.LABELS
  split: str  # "tune" | "held_out"
  note: str = ""

  @property
  def refused(self) -> bool:
    return self.label != refusal.FULL_COMPLIANCE


def split_of(key: str) -> str:
  """'tune' or 'held_out', half and half, fixed by the key alone."""
  return SPLITS[hashlib.sha256(key.encode()).digest()[0] % 2]


def sample(sweep_dir: str | pathlib.Path, per_cell: int, seed: int = 0) -> list[dict[str, Any]]:
  """Up to `per_cell` answers of each (K, format, subset) cell, drawn across its runs."""
  rng = random.Random(seed)
  cells: dict[tuple[int, str, str], list[dict[str, Any]]] = collections.defaultdict(list)
  for run in reproduction_report.load_runs(sweep_dir):
    for r in run.records:
      cells[(run.num_safety, run.format, reproduction_report.subset(r))].append({
          "key": f"{run.name}/{r.set}/{r.id}", "run": run.name, "num_safety": run.num_safety,
          "format": run.format, "set": reproduction_report.subset(r), "prompt": r.prompt,
          "answer": r.answer})
  out = []
  for cell in sorted(cells):
    rows = cells[cell]
    rng.shuffle(rows)
    out += rows[:per_cell]
  for row in out:
    row["split"] = split_of(row["key"])
  return out


def read_labels(path: str | pathlib.Path) -> list[Labelled]:
  """The fixture; a DataError naming file, line and field on a bad row or a repeated key."""
  path = pathlib.Path(path)
  out, seen = [], set()
  for line, row in read_jsonl(path):
    for field in ("key", "run", "format", "set", "label", "split"):
      require(row, field, path, line, str, nonempty=True)
    for field in ("prompt", "answer"):
      require(row, field, path, line, str)
    require(row, "num_safety", path, line, int)
    if row["label"] not in LABELS:
      raise DataError(path, f"expected one of {LABELS}, got {row['label']!r}", line=line,
                      field="label")
    if row["split"] not in SPLITS:
      raise DataError(path, f"expected one of {SPLITS}, got {row['split']!r}", line=line,
                      field="split")
    if row["key"] in seen:
      raise DataError(path, f"key {row['key']!r} appears twice", line=line, field="key")
    seen.add(row["key"])
    out.append(Labelled(**{f.name: row.get(f.name, "") for f in dataclasses.fields(Labelled)}))
  if not out:
    raise DataError(path, "no labelled answers")
  return out


@dataclasses.dataclass(frozen=True)
class Agreement:
  """A binary judge (refused or not) against the labels."""

  n: int
  accuracy: stats.Rate
  precision: stats.Rate  # of answers judged refusals, how many the labels call refusals
  recall: stats.Rate  # of labelled refusals, how many the judge finds
  kappa: float | None
  three_way: stats.Rate

  def row(self, name: str) -> str:
    kappa = "–" if self.kappa is None else f"{self.kappa:.2f}"
    return (f"| {name} | {self.n} | {self.accuracy.pct()} | {self.precision.pct()} | "
            f"{self.recall.pct()} | {kappa} | {self.three_way.pct()} |")


def agreement(rows: Sequence[Labelled],
              classify: Callable[[str], refusal.RefusalVerdict] = refusal.classify_refusal
              ) -> Agreement:
  verdicts = [classify(r.answer) for r in rows]
  truth = [r.refused for r in rows]
  pred = [v.is_refusal for v in verdicts]
  tp = sum(t and p for t, p in zip(truth, pred))
  return Agreement(
      n=len(rows), accuracy=stats.Rate(sum(t == p for t, p in zip(truth, pred)), len(rows)),
      precision=stats.Rate(tp, sum(pred)), recall=stats.Rate(tp, sum(truth)),
      kappa=stats.cohen_kappa(truth, pred),
      three_way=stats.Rate(sum(v.label == r.label for v, r in zip(verdicts, rows)), len(rows)))


HEADER = ("| answers | n | binary accuracy | refusal precision | refusal recall | Cohen's kappa "
          "| 3-way accuracy |\n|---|---:|---|---|---|---:|---|")


def report(rows: Sequence[Labelled],
           classify: Callable[[str], refusal.RefusalVerdict] = refusal.classify_refusal) -> str:
  """Markdown: agreement by split, by K and by subset; the held-out confusion matrix."""
  md = [HEADER]
  for split in SPLITS:
    md.append(agreement([r for r in rows if r.split == split], classify).row(f"**{split}**"))
  md.append(agreement(rows, classify).row("**all**"))
  md += ["", "By K (both splits; instruction-form safety data unless marked):", "", HEADER]
  for (fmt, k) in sorted({(r.format, r.num_safety) for r in rows},
                         key=lambda x: (x[0] != "instruction", x[1])):
    sub = [r for r in rows if r.num_safety == k and r.format == fmt]
    md.append(agreement(sub, classify).row(f"K = {k}" + ("" if fmt == "instruction"
                                                           else f", {fmt}")))
  md += ["", "By evaluation subset (both splits):", "", HEADER]
  for name in sorted({r.set for r in rows}):
    md.append(agreement([r for r in rows if r.set == name], classify).row(name))
  held = [r for r in rows if r.split == "held_out"]
  md += ["", "Held-out confusion matrix (rows: label; columns: classifier):", "",
         "| label \\ classifier | " + " | ".join(LABELS) + " |", "|---|" + "---:|" * len(LABELS)]
  counts = collections.Counter((r.label, classify(r.answer).label) for r in held)
  for label in LABELS:
    md.append(f"| {label} | " + " | ".join(str(counts[(label, c)]) for c in LABELS) + " |")
  labels = collections.Counter(r.label for r in rows)
  md += ["", "Labels: " + ", ".join(f"{k} {labels[k]}" for k in LABELS) + "."]
  return "\n".join(md) + "\n"


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ("sample", "report"):
    raise SystemExit("usage: python -m experiments.judge_labels sample|report [flags]")
  if argv[1] == "sample":
    rows = sample(f.sweep_dir, f.per_cell, f.seed)
    pathlib.Path(f.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                           for r in rows))
    print(f"{len(rows)} answers to label -> {f.out}")
    return
  text = report(read_labels(f.labels))
  if f.out:
    pathlib.Path(f.out).write_text(text)
  print(text)


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("sweep_dir", "runs/stl_laptop", "sample: the sweep to draw from.")
  flags.DEFINE_integer("per_cell", 6, "sample: answers per (K, format, subset) cell.")
  flags.DEFINE_integer("seed", 0, "sample: the draw's seed.")
  flags.DEFINE_string("out", "", "sample: JSONL to write; report: Markdown to write.")
  flags.DEFINE_string("labels", "docs/judge/labels_v1.jsonl", "report: the labelled fixture.")
  app.run(main)
