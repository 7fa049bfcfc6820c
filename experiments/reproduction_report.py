"""The Safety-Tuned LLaMAs sweep as findings: rates with intervals, differences, seed spread.

Reads every finished run of a sweep directory (`<run>/config.json` for K, format and seed,
`<run>/result.json` for the held-out loss, `<run>/eval/answers.jsonl` for the answers),
re-judges each answer with the current refusal classifier (so a better judge re-scores old
runs), and writes `findings.md`, `findings.json` and a plot:

- per (K, format), pooled over seeds: refusal on each unsafe set and pooled, false refusal on
  XSTest's safe prompts and PhysicalSafetySafe, refusal on I-Alpaca, held-out loss; each rate
  with n and its Wilson 95% interval, and the range of the per-seed rates beside it;
- for each K, the difference from K = 0 (same format) with Newcombe's 95% interval;
- the format test: at each K run in both forms, instruction vs question safety data, on the
  instruction-form unsafe sets and on the question-form ones (Q-Harm, XSTest unsafe).

Pooling seeds treats prompts answered by different seeds as independent trials, which they
are not quite (the same prompts are reused); the seed range is printed so the reader can see
how much of the spread is the training draw rather than the prompt sample.

  python -m experiments.reproduction_report --sweep_dir=runs/stl_laptop
  python -m experiments.reproduction_report --sweep_dir=runs/stl_laptop \\
      --export_answers=docs/results/stl_laptop        # gzip JSONL answers for re-judging
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from alignment.answers.records import AnswerRecord, read_answers
from alignment.evaluation import stats
from alignment.judges import refusal

ANSWERS = "answers.jsonl"
# The paper's unsafe sets (I-Controversial carries no label in the data; its prompts ask for
# arguments that groups are inferior, so it counts as unsafe here).
INSTRUCTION_UNSAFE = ("malicious_instructions", "cona", "controversial",
                      "physical_safety_unsafe")
QUESTION_UNSAFE = ("q_harm", "xstest_unsafe")
PAPER_UNSAFE = INSTRUCTION_UNSAFE + ("q_harm",)
SAFE = ("xstest_safe", "physical_safety_safe", "i_alpaca")
COLUMNS = PAPER_UNSAFE + ("xstest_unsafe",) + SAFE


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  num_safety: int
  format: str
  seed: int
  eval_loss: float | None
  records: tuple[AnswerRecord, ...]
  num_base: int | None = None


def subset(record: AnswerRecord) -> str:
  """The column an answer counts in: its set, with XSTest split by label."""
  if record.set == "xstest":
    return f"xstest_{record.label}"
  return record.set


def _json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read ({e})") from None


def load_runs(sweep_dir: str | pathlib.Path, eval_subdir: str = "eval") -> list[Run]:
  """Every run of the sweep with a finished evaluation, sorted by (format, K, seed)."""
  sweep_dir = pathlib.Path(sweep_dir)
  if not sweep_dir.is_dir():
    raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
  runs = []
  for result in sorted(sweep_dir.glob(f"*/{eval_subdir}/result.json")):
    run_dir = result.parent.parent
    config = _json(run_dir / "config.json")
    data = config.get("data") or {}
    if "num_safety" not in data:
      raise ValueError(f"{run_dir / 'config.json'}: no data.num_safety (not an SFT run)")
    sft_result = _json(run_dir / "result.json") if (run_dir / "result.json").is_file() else {}
    losses = [e["eval_loss"] for e in sft_result.get("evaluations", []) if "eval_loss" in e]
    records = [r for r in read_answers(result.parent / ANSWERS) if r.attack is None]
    runs.append(Run(run_dir.name, int(data["num_safety"]),
                    str(data.get("safety_format", "instruction")), int(config.get("seed", 0)),
                    losses[-1] if losses else None, tuple(records), data.get("num_base")))
  if not runs:
    raise FileNotFoundError(f"no finished evaluations (*/{eval_subdir}/result.json) in "
                            f"{sweep_dir}")
  return sorted(runs, key=lambda r: (r.format != "instruction", r.format, r.num_safety, r.seed))


def refusal_counts(records: Iterable[AnswerRecord], judge=refusal.is_refusal
                   ) -> dict[str, stats.Rate]:
  """{column: Rate of refusals} for one run's answers, plus pooled columns."""
  by: dict[str, list[bool]] = collections.defaultdict(list)
  for r in records:
    by[subset(r)].append(judge(r.answer))
  out = {name: stats.Rate(sum(v), len(v)) for name, v in by.items()}

  def pool(names: Sequence[str]) -> stats.Rate:
    return stats.Rate(sum(out[n].k for n in names if n in out),
                      sum(out[n].n for n in names if n in out))

  out["unsafe_pooled"] = pool(PAPER_UNSAFE)
  out["instruction_unsafe"] = pool(INSTRUCTION_UNSAFE)
  out["question_unsafe"] = pool(QUESTION_UNSAFE)
  return out


def _sum_rates(rates: Sequence[stats.Rate]) -> stats.Rate:
  return stats.Rate(sum(r.k for r in rates), sum(r.n for r in rates))


@dataclasses.dataclass
class Group:
  """The runs of one (K, format), pooled over seeds."""

  num_safety: int
  format: str
  runs: list[Run]
  per_run: list[dict[str, stats.Rate]]

  @property
  def pooled(self) -> dict[str, stats.Rate]:
    names = {n for rates in self.per_run for n in rates}
    return {n: _sum_rates([rates[n] for rates in self.per_run if n in rates]) for n in names}

  def seed_spread(self, column: str) -> dict[str, Any]:
    return stats.spread([rates[column].value for rates in self.per_run if column in rates])

  @property
  def eval_loss(self) -> dict[str, Any]:
    return stats.spread([r.eval_loss for r in self.runs])


def group_runs(runs: Sequence[Run], judge=refusal.is_refusal) -> list[Group]:
  groups: dict[tuple[str, int], Group] = {}
  for run in runs:
    g = groups.setdefault((run.format, run.num_safety), Group(run.num_safety, run.format, [], []))
    g.runs.append(run)
    g.per_run.append(refusal_counts(run.records, judge))
  return [groups[k] for k in sorted(groups, key=lambda k: (k[0] != "instruction", k))]


def _fraction(g: Group) -> str:
  """' (11%)': K's share of the mixture, when every run of the group has the same N."""
  bases = {r.num_base for r in g.runs}
  if len(bases) != 1 or None in bases:
    return ""
  (n,) = bases
  return f" ({100 * g.num_safety / (n + g.num_safety):.0f}%)"


def _cell(rate: stats.Rate | None) -> str:
  return rate.pct() if rate is not None and rate.n else "–"


def _diff_cell(d: tuple[float, float, float] | None) -> str:
  if d is None:
    return "–"
  delta, lo, hi = d
  mark = " *" if lo > 0 or hi < 0 else ""
  return f"{100 * delta:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{mark}"


def _range(spread: Mapping[str, Any]) -> str:
  if not spread["seeds"]:
    return "–"
  if spread["seeds"] == 1:
    return f"{100 * spread['mean']:.0f}"
  return f"{100 * spread['min']:.0f}–{100 * spread['max']:.0f}"


def _loss(spread: Mapping[str, Any]) -> str:
  if not spread["seeds"]:
    return "–"
  if spread["seeds"] == 1:
    return f"{spread['mean']:.3f}"
  return f"{spread['mean']:.3f} ({spread['min']:.3f}–{spread['max']:.3f})"


def findings(groups: Sequence[Group]) -> tuple[str, dict]:
  """(Markdown, JSON payload) of the sweep's tables."""
  md: list[str] = []
  payload: dict[str, Any] = {"groups": [], "differences": [], "format": [], "runs": []}
  md += ["## Refusal by K, pooled over seeds", "",
         "Each cell: refusal % [Wilson 95% interval] (refusals/answers). Seed range: the lowest "
         "and highest per-seed rate. Held-out loss: mean over seeds (range).", ""]
  head = ["format", "K", "seeds"] + list(COLUMNS) + [
      "unsafe pooled", "unsafe pooled, seed range", "XSTest safe, seed range", "held-out loss"]
  md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for g in groups:
    p = g.pooled
    row = [g.format, f"{g.num_safety}{_fraction(g)}", str(len(g.runs))]
    row += [_cell(p.get(c)) for c in COLUMNS]
    row += [_cell(p["unsafe_pooled"]), _range(g.seed_spread("unsafe_pooled")),
            _range(g.seed_spread("xstest_safe")), _loss(g.eval_loss)]
    md.append("| " + " | ".join(row) + " |")
    payload["groups"].append({
        "format": g.format, "num_safety": g.num_safety, "seeds": [r.seed for r in g.runs],
        "rates": {c: r.to_dict() for c, r in sorted(p.items())},
        "seed_spread": {c: g.seed_spread(c) for c in ("unsafe_pooled", "xstest_safe",
                                                       "physical_safety_safe")},
        "eval_loss": g.eval_loss})

  md += ["", "## Difference from K = 0 (same format, pooled over seeds)", "",
         "Percentage points [Newcombe 95% interval]; * marks an interval that excludes 0.", ""]
  diff_cols = ("unsafe_pooled", "q_harm", "xstest_unsafe", "xstest_safe",
               "physical_safety_safe", "i_alpaca")
  md += ["| format | K | " + " | ".join(diff_cols) + " |", "|" + "---|" * (2 + len(diff_cols))]
  base = {g.format: g for g in groups if g.num_safety == 0}
  base.setdefault("question", base.get("instruction"))  # K = 0 has no format
  for g in groups:
    ref = base.get(g.format)
    if ref is None or g is ref:
      continue
    diffs = {c: stats.difference(g.pooled.get(c, stats.Rate(0, 0)),
                                 ref.pooled.get(c, stats.Rate(0, 0))) for c in diff_cols}
    md.append(f"| {g.format} | {g.num_safety}{_fraction(g)} | "
              + " | ".join(_diff_cell(diffs[c]) for c in diff_cols) + " |")
    payload["differences"].append({"format": g.format, "num_safety": g.num_safety, **{
        c: None if d is None else {"difference": d[0], "low": d[1], "high": d[2]}
        for c, d in diffs.items()}})

  by_key = {(g.format, g.num_safety): g for g in groups}
  both = sorted(k for f, k in by_key if f == "question" and ("instruction", k) in by_key)
  if both:
    md += ["", "## Format: instruction-form vs question-form safety data", "",
           "Same K and seeds. Instruction-form unsafe sets: " + ", ".join(INSTRUCTION_UNSAFE)
           + "; question-form: " + ", ".join(QUESTION_UNSAFE) + ".", "",
           "| K | safety data | instruction-form unsafe | question-form unsafe | XSTest safe |",
           "|---|---|---|---|---|"]
    for k in both:
      gi, gq = by_key[("instruction", k)], by_key[("question", k)]
      for g in (gi, gq):
        p = g.pooled
        md.append(f"| {k} | {g.format} (seeds {', '.join(str(r.seed) for r in g.runs)}) | "
                  f"{_cell(p['instruction_unsafe'])} | {_cell(p['question_unsafe'])} | "
                  f"{_cell(p.get('xstest_safe'))} |")
      diffs = {c: stats.difference(gq.pooled[c], gi.pooled[c])
               for c in ("instruction_unsafe", "question_unsafe", "xstest_safe")}
      md.append(f"| {k} | question − instruction | {_diff_cell(diffs['instruction_unsafe'])} | "
                f"{_diff_cell(diffs['question_unsafe'])} | {_diff_cell(diffs['xstest_safe'])} |")
      payload["format"].append({"num_safety": k, **{
          c: None if d is None else {"difference": d[0], "low": d[1], "high": d[2]}
          for c, d in diffs.items()}})

  md += ["", "## Every run", "",
         "| run | unsafe pooled | Q-Harm | XSTest unsafe | XSTest safe | PhysicalSafetySafe | "
         "I-Alpaca | held-out loss |", "|---|---|---|---|---|---|---|---|"]
  for g in groups:
    for run, rates in zip(g.runs, g.per_run):
      cells = [_cell(rates.get(c)) for c in ("unsafe_pooled", "q_harm", "xstest_unsafe",
                                              "xstest_safe", "physical_safety_safe",
                                              "i_alpaca")]
      loss = "–" if run.eval_loss is None else f"{run.eval_loss:.3f}"
      md.append(f"| {run.name} | " + " | ".join(cells) + f" | {loss} |")
      payload["runs"].append({"name": run.name, "num_safety": run.num_safety,
                              "format": run.format, "seed": run.seed,
                              "eval_loss": run.eval_loss,
                              "rates": {c: r.to_dict() for c, r in sorted(rates.items())}})
  return "\n".join(md) + "\n", payload


def plot(groups: Sequence[Group], path: pathlib.Path) -> None:
  """Refusal vs K with Wilson intervals (pooled) and per-seed points; held-out loss beside."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5),
                                    gridspec_kw={"width_ratios": [2.2, 1]})
  series = (("unsafe_pooled", "unsafe (paper sets, pooled)", "tab:red"),
            ("xstest_unsafe", "XSTest unsafe", "tab:orange"),
            ("xstest_safe", "XSTest safe (false refusal)", "tab:blue"),
            ("physical_safety_safe", "PhysicalSafetySafe (false refusal)", "tab:cyan"),
            ("i_alpaca", "I-Alpaca (false refusal)", "tab:green"))
  for fmt, marker, dash in (("instruction", "o", "-"), ("question", "s", "none")):
    gs = [g for g in groups if g.format == fmt]
    if not gs:
      continue
    for column, label, colour in series:
      xs, ys, lo, hi = [], [], [], []
      for g in gs:
        r = g.pooled.get(column)
        if r is None or not r.n:
          continue
        a, b = r.interval
        xs.append(g.num_safety)
        ys.append(100 * r.value)
        lo.append(max(0.0, 100 * (r.value - a)))  # Wilson bounds may round past the rate
        hi.append(max(0.0, 100 * (b - r.value)))
        for rates in g.per_run:
          if column in rates and rates[column].n:
            ax.plot(g.num_safety, 100 * rates[column].value, marker, color=colour, alpha=0.3,
                    markersize=3)
      if xs:
        ax.errorbar(xs, ys, yerr=[lo, hi], marker=marker, linestyle=dash, color=colour,
                    capsize=3, label=f"{label}" + ("" if fmt == "instruction" else
                                                   ", question-form data"),
                    markerfacecolor="white" if fmt == "question" else colour)
  bases = {r.num_base for g in groups for r in g.runs}
  ax.set_xlabel("safety examples K" + (f" (added to {bases.pop()} Alpaca)" if len(bases) == 1
                                       and None not in bases else ""))
  ax.set_ylabel("refusal %  (95% Wilson interval; faint: single seeds)")
  ax.set_ylim(-3, 103)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left")
  for fmt, marker in (("instruction", "o"), ("question", "s")):
    gs = [g for g in groups if g.format == fmt]
    pts = [(g.num_safety, r.eval_loss) for g in gs for r in g.runs if r.eval_loss is not None]
    if pts:
      ax_loss.plot(*zip(*pts), marker, label=fmt, alpha=0.7)
  ax_loss.set_xlabel("safety examples K")
  ax_loss.set_ylabel("held-out Alpaca loss (per seed)")
  ax_loss.grid(alpha=0.3)
  ax_loss.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def export_answers(runs: Sequence[Run], out_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """prompts.jsonl.gz (set, id, label, prompt; once) and one <run>.jsonl.gz of answers each."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  prompts: dict[tuple[str, str], dict[str, Any]] = {}
  paths = []
  for run in runs:
    path = out_dir / f"{run.name}.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
      for r in run.records:
        prompts.setdefault((r.set, r.id), {"set": r.set, "id": r.id, "label": r.label,
                                           "prompt": r.prompt})
        f.write(json.dumps({"set": r.set, "id": r.id, "answer": r.answer},
                           ensure_ascii=False) + "\n")
    paths.append(path)
  path = out_dir / "prompts.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
    for row in prompts.values():
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return [path] + paths


def write(sweep_dir: str | pathlib.Path, out_dir: str | pathlib.Path | None = None,
          eval_subdir: str = "eval") -> dict[str, pathlib.Path]:
  runs = load_runs(sweep_dir, eval_subdir)
  groups = group_runs(runs)
  md, payload = findings(groups)
  out = pathlib.Path(out_dir or sweep_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"markdown": out / "findings.md", "json": out / "findings.json",
           "png": out / "findings.png"}
  paths["markdown"].write_text(f"# Safety-Tuned LLaMAs sweep: {len(runs)} runs\n\n" + md)
  paths["json"].write_text(json.dumps(payload, indent=1))
  plot(groups, paths["png"])
  return paths


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  paths = write(f.sweep_dir, f.out_dir or None, f.eval_subdir)
  if f.export_answers:
    exported = export_answers(load_runs(f.sweep_dir, f.eval_subdir), f.export_answers)
    print(f"exported {len(exported)} files to {f.export_answers}")
  print(paths["markdown"].read_text())
  print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("sweep_dir", "runs/stl_laptop", "Directory holding the sweep's runs.")
  flags.DEFINE_string("out_dir", "", "Where to write findings.* (default: sweep_dir).")
  flags.DEFINE_string("eval_subdir", "eval", "Each run's evaluation subdirectory.")
  flags.DEFINE_string("export_answers", "", "Also write gzip JSONL answers to this directory.")
  app.run(main)
