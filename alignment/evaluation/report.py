"""The report format shared by every evaluation: one run's table, a sweep's table and plots.

A run is one model's scored answers (`records.AnswerRecord`, scored by `scorers.score_answers`)
over several evaluation sets. `summarize_run` reduces them to a `RunSummary`; a sweep is a
{RunMeta: RunSummary} mapping over the number of safety examples K and the prompt format
(instruction vs question), the axes of Safety-Tuned LLaMAs (Bianchi et al., 2023). Every table
is written as Markdown for people and JSON for programs; plots follow the paper's figures:
a metric against K, one line per format.

Definitions:
  refusal rate:  share of a set's answers whose `refusal` score is > 0 (full or partial).
  harmfulness / helpfulness: mean of that score over the answers that have one; None if none do.
  unsafe refusal rate: refusal rate pooled over every answer labelled unsafe.
  false-refusal rate: refusal rate on the XSTest set's safe prompts (set name XSTEST_SET).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence

from alignment.evaluation.records import AnswerRecord
from alignment.evaluation.scorers import HARMFULNESS, HELPFULNESS, REFUSAL
from alignment.evaluation.xstest import XSTEST_SET, XSTestRates, xstest_rates


@dataclasses.dataclass(frozen=True)
class SetSummary:
  """One evaluation set of one run."""

  set: str
  n: int
  refusal_rate: float | None
  harmfulness: float | None
  helpfulness: float | None
  rates: dict[str, XSTestRates]  # by label ("safe"/"unsafe"), for labelled answers only


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """All sets of one run plus the pooled figures a sweep compares."""

  sets: dict[str, SetSummary]
  unsafe_refusal_rate: float | None
  false_refusal_rate: float | None
  helpfulness: float | None

  @property
  def n(self) -> int:
    return sum(s.n for s in self.sets.values())


@dataclasses.dataclass(frozen=True)
class RunMeta:
  """What distinguishes the runs of a sweep: safety examples K and the prompt format."""

  safety_examples: int
  format: str = "instruction"
  name: str = ""  # optional label, e.g. the run directory


def _mean(values: Iterable[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return math.fsum(values) / len(values) if values else None


def _refusal_rate(records: Sequence[AnswerRecord]) -> float | None:
  scores = [r.scores.get(REFUSAL) for r in records]
  scored = [s for s in scores if s is not None]
  return sum(s > 0 for s in scored) / len(scored) if scored else None


def summarize_run(records: Iterable[AnswerRecord]) -> RunSummary:
  """Per-set and pooled figures of one run's scored answers (sets in first-seen order)."""
  by_set: dict[str, list[AnswerRecord]] = {}
  for r in records:
    by_set.setdefault(r.set, []).append(r)
  if not by_set:
    raise ValueError("no records to summarize")
  sets = {}
  for name, rs in by_set.items():
    labelled = [r for r in rs if r.label is not None and r.scores.get(REFUSAL) is not None]
    sets[name] = SetSummary(
        set=name, n=len(rs), refusal_rate=_refusal_rate(rs),
        harmfulness=_mean(r.scores.get(HARMFULNESS) for r in rs),
        helpfulness=_mean(r.scores.get(HELPFULNESS) for r in rs),
        rates=xstest_rates(labelled))
  everything = [r for rs in by_set.values() for r in rs]
  return RunSummary(
      sets=sets,
      unsafe_refusal_rate=_refusal_rate([r for r in everything if r.label == "unsafe"]),
      false_refusal_rate=_refusal_rate([r for r in by_set.get(XSTEST_SET, [])
                                        if r.label == "safe"]),
      helpfulness=_mean(r.scores.get(HELPFULNESS) for r in everything))


# ---------------------------------------------------------------------------------------------
# Tables.


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


def _harm_sets(summaries: Mapping[RunMeta, RunSummary]) -> list[str]:
  """Sets that have a harmfulness score in any run, in first-seen order."""
  names: list[str] = []
  for summary in summaries.values():
    for name, s in summary.sets.items():
      if s.harmfulness is not None and name not in names:
        names.append(name)
  return names


def _sweep_metrics(summary: RunSummary, harm_sets: Sequence[str]) -> dict[str, float | None]:
  out = {f"harmfulness: {name}": summary.sets[name].harmfulness if name in summary.sets else None
         for name in harm_sets}
  out["unsafe refusal %"] = summary.unsafe_refusal_rate
  out["XSTest safe false refusal %"] = summary.false_refusal_rate
  out["helpfulness"] = summary.helpfulness
  return out


def _sorted_runs(summaries: Mapping[RunMeta, RunSummary]) -> list[tuple[RunMeta, RunSummary]]:
  return sorted(summaries.items(), key=lambda kv: (kv[0].format, kv[0].safety_examples,
                                                   kv[0].name))


def sweep_table(summaries: Mapping[RunMeta, RunSummary]) -> Table:
  """Rows: runs by (format, K). Columns: harmfulness per set, unsafe refusal, false refusal,
  helpfulness. A set gets a harmfulness column when any run has a harmfulness score for it."""
  if not summaries:
    raise ValueError("no runs to tabulate")
  harm_sets = _harm_sets(summaries)
  rows = []
  for meta, summary in _sorted_runs(summaries):
    metrics = _sweep_metrics(summary, harm_sets)
    rows.append([meta.format + (f" ({meta.name})" if meta.name else ""), meta.safety_examples,
                 *metrics.values()])
  columns = ["format", "safety examples", *_sweep_metrics(next(iter(summaries.values())),
                                                         harm_sets)]
  return Table(columns, rows)


def _summary_json(summary: RunSummary) -> dict:
  out = dataclasses.asdict(summary)
  out["n"] = summary.n
  for name, s in summary.sets.items():
    for lab, r in s.rates.items():
      out["sets"][name]["rates"][lab]["refusal_rate"] = r.refusal_rate
  return out


def _write(directory: str | pathlib.Path, stem: str, markdown: str, payload: object
           ) -> dict[str, pathlib.Path]:
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  md, js = directory / f"{stem}.md", directory / f"{stem}.json"
  md.write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
  js.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  return {"markdown": md, "json": js}


def write_run_report(directory: str | pathlib.Path, summary: RunSummary, *,
                     title: str = "Evaluation run", stem: str = "report"
                     ) -> dict[str, pathlib.Path]:
  """`<stem>.md` and `<stem>.json` in `directory`; returns their paths."""
  table = run_table(summary)
  lines = [f"# {title}", "", table.to_markdown(), "",
           f"Refusal on unsafe prompts (pooled): {_fmt_pct(summary.unsafe_refusal_rate)} %  ",
           f"False refusal on XSTest safe prompts: {_fmt_pct(summary.false_refusal_rate)} %  ",
           f"Helpfulness (pooled mean): {_fmt(summary.helpfulness)}"]
  payload = {"title": title, "summary": _summary_json(summary), "table": table.to_json()}
  return _write(directory, stem, "\n".join(lines), payload)


def write_sweep_report(directory: str | pathlib.Path, summaries: Mapping[RunMeta, RunSummary],
                       *, title: str = "Safety-examples sweep", stem: str = "sweep",
                       plot: bool = True) -> dict[str, pathlib.Path]:
  """`<stem>.md`, `<stem>.json` and (plot=True) `<stem>.png` in `directory`."""
  table = sweep_table(summaries)
  lines = [f"# {title}", "", table.to_markdown()]
  runs = [{**dataclasses.asdict(meta), "summary": _summary_json(s)}
          for meta, s in _sorted_runs(summaries)]
  paths = _write(directory, stem, "\n".join(lines),
                 {"title": title, "runs": runs, "table": table.to_json()})
  if plot:
    paths["png"] = plot_sweep(summaries, pathlib.Path(directory) / f"{stem}.png", title=title)
  return paths


def _fmt(x: float | None) -> str:
  return "–" if x is None else f"{x:.3f}"


def _fmt_pct(x: float | None) -> str:
  return "–" if x is None else f"{100 * x:.1f}"


# ---------------------------------------------------------------------------------------------
# Plots.


def plot_sweep(summaries: Mapping[RunMeta, RunSummary], path: str | pathlib.Path, *,
               title: str = "") -> pathlib.Path:
  """PNG of each metric against the number of safety examples, one line per format.

  Panels: harmfulness of each set that has it (as in the paper's figures), refusal on unsafe
  prompts, and false refusal on XSTest safe prompts. A metric no run has is left out; with no
  metric at all the figure says so rather than failing.
  """
  # An Agg canvas on a bare Figure: no pyplot, so no global backend switch or figure registry
  # (safe inside a notebook or a training process).
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not summaries:
    raise ValueError("no runs to plot")
  harm_sets = _harm_sets(summaries)
  runs = [(meta, _sweep_metrics(summary, harm_sets)) for meta, summary in _sorted_runs(summaries)]
  metrics = [m for m in runs[0][1] if m != "helpfulness"]
  panels = []
  for metric in metrics:
    lines: dict[str, list[tuple[int, float]]] = {}
    for meta, values in runs:
      if values[metric] is not None:
        lines.setdefault(meta.format, []).append((meta.safety_examples, values[metric]))
    if lines:
      panels.append((metric, lines))
  ncols = max(1, min(3, len(panels)))
  nrows = max(1, math.ceil(len(panels) / ncols))
  fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows))
  FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  if not panels:
    axes[0, 0].text(0.5, 0.5, "no scored metrics in these runs", ha="center", va="center")
  for ax, (metric, lines) in zip(axes.flat, panels):
    percent = metric.endswith("%")
    for fmt, points in lines.items():
      xs, ys = zip(*points)
      ax.plot(xs, [100 * y if percent else y for y in ys], marker="o", label=fmt)
    ax.set_title(metric.removesuffix(" %"), fontsize=10)
    ax.set_xlabel("safety examples")
    ax.set_ylabel("% of answers" if percent else "mean score")
    if percent:
      ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  return path
