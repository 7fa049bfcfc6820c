"""The tables of a report: a run's sets, a sweep's runs, the attack vectors.

A `Table` is column names and plain values, written as Markdown for people and JSON for
programs (`report.py` writes both).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from alignment.evaluation.attack_summary import AttackSummary
from alignment.evaluation.summary import RunMeta, RunSummary


@dataclasses.dataclass(frozen=True)
class Table:
  """Column names and rows of plain values (str, int, float or None)."""

  columns: list[str]
  rows: list[list[object]]

  def to_markdown(self) -> str:
    """Pipe table; None shows as '–', floats to 3 places; a column named '... %' holds shares
    (0..1) and shows them as percentages."""

    def cell(column: str, v: object) -> str:
      if v is None:
        return "–"
      if isinstance(v, float):
        return f"{100 * v:.1f}" if column.endswith("%") else f"{v:.3f}"
      return str(v)

    lines = ["| " + " | ".join(self.columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(self.columns, row)) + " |"
              for row in self.rows]
    return "\n".join(lines)

  def to_json(self) -> dict:
    return {"columns": self.columns, "rows": self.rows}


_RATE_COLUMNS = ("full compliance %", "full refusal %", "partial refusal %")


def run_table(summary: RunSummary) -> Table:
  """Rows: evaluation sets. Columns: n, refusal rate, harmfulness, XSTest rates per label."""
  labels = sorted({lab for s in summary.sets.values() for lab in s.rates})
  columns = ["set", "n", "refusal %", "harmfulness"]
  columns += [f"{lab}: {c}" for lab in labels for c in _RATE_COLUMNS]
  rows = []
  for s in summary.sets.values():
    row: list[object] = [s.set, s.n, s.refusal_rate, s.harmfulness]
    for lab in labels:
      r = s.rates.get(lab)
      row += [None, None, None] if r is None else [r.full_compliance, r.full_refusal,
                                                   r.partial_refusal]
    rows.append(row)
  return Table(columns, rows)


def harmfulness_sets(summaries: Mapping[RunMeta, RunSummary]) -> list[str]:
  """Sets that have a harmfulness score in any run, in first-seen order."""
  names: list[str] = []
  for summary in summaries.values():
    for name, s in summary.sets.items():
      if s.harmfulness is not None and name not in names:
        names.append(name)
  return names


def sweep_metrics(summary: RunSummary, harm_sets: Sequence[str]) -> dict[str, float | None]:
  """A sweep's columns for one run (harmfulness per set in `harm_sets`, then the pooled ones)."""
  out = {f"harmfulness: {name}": summary.sets[name].harmfulness if name in summary.sets else None
         for name in harm_sets}
  out["unsafe refusal %"] = summary.unsafe_refusal_rate
  out["XSTest safe false refusal %"] = summary.false_refusal_rate
  out["helpfulness"] = summary.helpfulness
  return out


def sweep_order(summaries: Mapping[RunMeta, RunSummary]) -> list[tuple[RunMeta, RunSummary]]:
  """The runs by (format, K, name): the rows of a sweep table, the points of its plot."""
  return sorted(summaries.items(), key=lambda kv: (kv[0].format, kv[0].safety_examples,
                                                   kv[0].name))


def sweep_table(summaries: Mapping[RunMeta, RunSummary]) -> Table:
  """Rows: runs by (format, K). Columns: harmfulness per set, unsafe refusal, false refusal,
  helpfulness. A set gets a harmfulness column when any run has a harmfulness score for it."""
  if not summaries:
    raise ValueError("no runs to tabulate")
  harm_sets = harmfulness_sets(summaries)
  rows = []
  for meta, summary in sweep_order(summaries):
    metrics = sweep_metrics(summary, harm_sets)
    rows.append([meta.format + (f" ({meta.name})" if meta.name else ""), meta.safety_examples,
                 *metrics.values()])
  columns = ["format", "safety examples", *sweep_metrics(next(iter(summaries.values())),
                                                         harm_sets)]
  return Table(columns, rows)


def attack_table(attacks: AttackSummary) -> Table:
  """Rows: baseline, then each vector. Columns: n, refusal, harmfulness, harmful rate, ASR."""
  columns = ["attack", "n", "refusal %", "harmfulness", attacks.harmful_column, "ASR %"]
  rows = [[r.attack, r.n, r.refusal_rate, r.harmfulness, r.harmful_rate, r.asr]
          for r in attacks.rows.values()]
  return Table(columns, rows)
