"""The plots of a report (PNG), after the paper's figures: a metric against K, and the attacks.

Each draws on an Agg canvas of a bare matplotlib Figure: no pyplot, so no global backend switch
or figure registry (safe inside a notebook or a training process). matplotlib is imported when
a plot is drawn, not with the module.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping

from alignment.evaluation.attack_summary import BASELINE, AttackSummary
from alignment.evaluation.summary import RunMeta, RunSummary
from alignment.evaluation.tables import harmfulness_sets, sweep_metrics, sweep_order


def plot_sweep(summaries: Mapping[RunMeta, RunSummary], path: str | pathlib.Path, *,
               title: str = "") -> pathlib.Path:
  """PNG of each metric against the number of safety examples, one line per format.

  Panels: harmfulness of each set that has it (as in the paper's figures), refusal on unsafe
  prompts, and false refusal on XSTest safe prompts. A metric no run has is left out; with no
  metric at all the figure says so rather than failing.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not summaries:
    raise ValueError("no runs to plot")
  harm_sets = harmfulness_sets(summaries)
  runs = [(meta, sweep_metrics(summary, harm_sets)) for meta, summary in sweep_order(summaries)]
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


def plot_attacks(attacks: AttackSummary, path: str | pathlib.Path, *, title: str = ""
                 ) -> pathlib.Path:
  """PNG with two bar panels over the vectors: ASR (percentage points, 0 line) and refusal rate
  (the baseline's as a dashed line), each bar labelled with its value ('–' where none)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  vectors = [r for name, r in attacks.rows.items() if name != BASELINE]
  base = attacks.rows[BASELINE]
  names = [r.attack for r in vectors]
  fig = Figure(figsize=(max(6.0, 1.1 * len(names) + 2), 6.4))
  FigureCanvasAgg(fig)
  ax_asr, ax_ref = fig.subplots(2, 1, sharex=True)
  asr = [100 * r.asr if r.asr is not None else 0.0 for r in vectors]
  bars = ax_asr.bar(names, asr, color=["tab:red" if v > 0 else "tab:blue" for v in asr])
  ax_asr.bar_label(bars, labels=["–" if r.asr is None else f"{100 * r.asr:+.1f}" for r in vectors],
                   fontsize=8)
  ax_asr.axhline(0, color="black", lw=0.8)
  low, high = min(asr + [0.0]), max(asr + [0.0])
  pad = max(5.0, 0.15 * (high - low))  # room for the value labels on either side of 0
  ax_asr.set_ylim(low - pad, high + pad)
  ax_asr.set_ylabel("ASR (pp)")
  ax_asr.set_title(f"attack success rate; {attacks.harmful_column.removesuffix(' %')}",
                   fontsize=10)
  refusal = [100 * r.refusal_rate if r.refusal_rate is not None else 0.0 for r in vectors]
  bars = ax_ref.bar(names, refusal, color="tab:gray")
  ax_ref.bar_label(bars, labels=["–" if r.refusal_rate is None else f"{v:.1f}"
                                 for r, v in zip(vectors, refusal)], fontsize=8)
  if base.refusal_rate is not None:
    ax_ref.axhline(100 * base.refusal_rate, color="black", ls="--", lw=1,
                   label=f"baseline {100 * base.refusal_rate:.1f} %")
    ax_ref.legend(fontsize=8)
  ax_ref.set_ylim(0, 102)
  ax_ref.set_ylabel("refusal % (attacked prompts)")
  ax_ref.tick_params(axis="x", rotation=30)
  for ax in (ax_asr, ax_ref):
    ax.grid(axis="y", alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  return path
