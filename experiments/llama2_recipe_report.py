"""The Llama 2 recipe's table and plots from a finished (or partial) run of
experiments/llama2_safety_recipe.py.

Per stage (the SFT start first): refusal on the paper's unsafe sets and XSTest's unsafe half,
false refusal on XSTest's safe half, PhysicalSafetySafe and I-Alpaca, each with n and a Wilson
95% interval, and the change from the start with Newcombe's interval (unpaired, so wider than
a paired test of the same prompts); mean safety-RM harmfulness on unsafe prompts and mean
helpfulness on safe ones with bootstrap 95% intervals; the stage's wall time. Refusals are
re-judged with the current classifier. Also: each reward model's held-out accuracy, ECE and
the safety RM's AUC for "refused vs complied" on the maintainers' labelled answers, and PPO's
reward and KL per iteration.

  python -m experiments.llama2_recipe_report --workdir=runs/llama2_laptop \\
      --out_dir=docs/results/llama2_laptop
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app
from absl import flags

from alignment.answers.records import AnswerRecord, read_answers
from alignment.evaluation import stats
from experiments import reproduction_report as grid_report

STAGES = ("start", "rs", "ppo", "cd", "cd_targeted", "dpo")
STAGE_NAMES = {"start": "SFT start", "rs": "rejection sampling", "ppo": "PPO",
               "cd": "context distillation", "cd_targeted": "targeted context distillation",
               "dpo": "DPO"}
RATE_COLUMNS = (("unsafe_pooled", "refusal, paper unsafe sets"),
                ("xstest_unsafe", "refusal, XSTest unsafe"),
                ("xstest_safe", "false refusal, XSTest safe"),
                ("physical_safety_safe", "false refusal, PhysicalSafetySafe"),
                ("i_alpaca", "false refusal, I-Alpaca"))
UNSAFE = grid_report.PAPER_UNSAFE + ("xstest_unsafe",)
SAFE = grid_report.SAFE


def _json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read ({e})") from None


def auc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
  """P(score of a positive > score of a negative), ties counting half (Mann-Whitney)."""
  if not positive or not negative:
    return None
  pos, neg = np.asarray(positive, float), np.asarray(negative, float)
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def mean_score(records: Sequence[AnswerRecord], score: str, columns: Sequence[str]
               ) -> dict[str, Any]:
  values = [r.scores[score] for r in records
            if grid_report.subset(r) in columns and r.scores.get(score) is not None]
  return stats.bootstrap_mean(values)


def stage_row(name: str, records: Sequence[AnswerRecord], start: dict[str, stats.Rate] | None,
              seconds: float | None) -> dict[str, Any]:
  rates = grid_report.refusal_counts(records)
  row: dict[str, Any] = {"stage": name, "seconds": seconds,
                         "rates": {c: rates.get(c, stats.Rate(0, 0)).to_dict()
                                   for c, _ in RATE_COLUMNS}}
  if start is not None:
    row["change"] = {c: stats.difference(rates.get(c, stats.Rate(0, 0)), start[c])
                     for c, _ in RATE_COLUMNS if c in start}
  row["harmfulness_unsafe"] = mean_score(records, "harmfulness", UNSAFE)
  row["helpfulness_safe"] = mean_score(records, "helpfulness", SAFE)
  row["_rates"] = rates
  return row


def timings(workdir: pathlib.Path) -> dict[str, float]:
  path = workdir / "timings.jsonl"
  if not path.is_file():
    return {}
  out: dict[str, float] = {}
  for line in path.read_text().splitlines():
    t = json.loads(line)
    out[t["step"]] = out.get(t["step"], 0.0) + t["seconds"]  # a resumed step adds up
  return out


def reward_models(workdir: pathlib.Path) -> dict[str, Any]:
  out = {}
  for rm in ("rm_safety", "rm_helpful"):
    path = workdir / rm / "eval.json"
    if path.is_file():
      e = _json(path)
      k = int(round(e["accuracy"] * e["pairs"]))
      out[rm] = {"accuracy": stats.Rate(k, e["pairs"]).to_dict(),
                 "ece": e.get("expected_calibration_error"),
                 "ranking_loss": e.get("ranking_loss")}
  check = workdir / "rm_judge_check.jsonl"
  if check.is_file():
    rows = [json.loads(line) for line in check.read_text().splitlines() if line.strip()]
    refused = [r["reward"] for r in rows if r["refused"]]
    complied = [r["reward"] for r in rows if not r["refused"]]
    out["judge_check"] = {"auc": auc(refused, complied), "refused": len(refused),
                          "complied": len(complied),
                          "mean_refused": float(np.mean(refused)) if refused else None,
                          "mean_complied": float(np.mean(complied)) if complied else None}
  return out


def ppo_history(workdir: pathlib.Path) -> list[dict[str, Any]]:
  path = workdir / "ppo" / "result.json"
  return _json(path).get("history", []) if path.is_file() else []


def _pct(rate: dict) -> str:
  return stats.Rate(rate["k"], rate["n"]).pct() if rate["n"] else "–"


def _mean(m: dict) -> str:
  if not m.get("n"):
    return "–"
  return f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def markdown(rows: Sequence[dict], rms: dict, history: Sequence[dict]) -> str:
  lines = ["| stage | wall | " + " | ".join(t for _, t in RATE_COLUMNS)
           + " | harmfulness (unsafe) | helpfulness (safe) |",
           "|---" * (len(RATE_COLUMNS) + 4) + "|"]
  for row in rows:
    cells = []
    for c, _ in RATE_COLUMNS:
      cell = _pct(row["rates"][c])
      d = (row.get("change") or {}).get(c)
      if d is not None and row["stage"] != "start":
        cell += f"<br>{100 * d[0]:+.1f} pp [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"
      cells.append(cell)
    wall = f"{row['seconds'] / 60:.1f} min" if row.get("seconds") else "–"
    lines.append(f"| {STAGE_NAMES.get(row['stage'], row['stage'])} | {wall} | "
                 + " | ".join(cells) + f" | {_mean(row['harmfulness_unsafe'])} | "
                 f"{_mean(row['helpfulness_safe'])} |")
  out = ["## Stages (each from the same SFT start)", "", *lines, ""]
  if rms:
    out += ["## Reward models", ""]
    for rm in ("rm_safety", "rm_helpful"):
      if rm in rms:
        r = rms[rm]
        out.append(f"- {rm}: held-out accuracy {_pct(r['accuracy'])}, ECE "
                   f"{r['ece']:.3f}, ranking loss {r['ranking_loss']:.3f}")
    if "judge_check" in rms:
      j = rms["judge_check"]
      out.append(f"- safety RM on the labelled answers to unsafe prompts: AUC "
                 f"{j['auc']:.3f} for refused ({j['refused']}) vs complied ({j['complied']}); "
                 f"mean reward {j['mean_refused']:.3f} vs {j['mean_complied']:.3f}")
    out.append("")
  if history:
    out += ["## PPO per iteration", "", "| iteration | reward | KL (nats/seq) | KL coef |",
            "|---|---|---|---|"]
    out += [f"| {h['iteration']} | {h['reward']:.3f} | {h['kl']:.3f} | {h['kl_coef']:.4f} |"
            for h in history]
    out.append("")
  return "\n".join(out)


def plot(rows: Sequence[dict], history: Sequence[dict], out_dir: pathlib.Path) -> list[str]:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  written = []
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for row in rows:
    u, s = row["_rates"]["unsafe_pooled"], row["_rates"].get("xstest_safe", stats.Rate(0, 0))
    if not (u.n and s.n):
      continue
    (ulo, uhi), (slo, shi) = u.interval, s.interval
    ax.errorbar([100 * s.value], [100 * u.value],
                xerr=[[100 * max(s.value - slo, 0)], [100 * max(shi - s.value, 0)]],
                yerr=[[100 * max(u.value - ulo, 0)], [100 * max(uhi - u.value, 0)]],
                fmt="o", capsize=3,
                label=STAGE_NAMES.get(row["stage"], row["stage"]))
  ax.set_xlabel("false refusal, XSTest safe (%)")
  ax.set_ylabel("refusal, paper unsafe sets (%)")
  ax.set_title("Each stage from the same SFT start (95% Wilson intervals)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = out_dir / "tradeoff.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  written.append(str(path))
  if history:
    fig, ax1 = plt.subplots(figsize=(6.5, 4))
    it = [h["iteration"] for h in history]
    ax1.plot(it, [h["reward"] for h in history], "o-", color="C0", label="mean reward")
    ax1.set_xlabel("PPO iteration")
    ax1.set_ylabel("mean combined reward (raw logit)", color="C0")
    ax2 = ax1.twinx()
    ax2.plot(it, [h["kl"] for h in history], "s--", color="C3", label="KL to start")
    ax2.set_ylabel("KL to the SFT start (nats/sequence)", color="C3")
    ax1.set_title("PPO: reward and KL per iteration")
    fig.tight_layout()
    path = out_dir / "ppo.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))
  return written


def write(workdir: str | pathlib.Path, out_dir: str | pathlib.Path | None = None
          ) -> dict[str, Any]:
  """Reads every finished stage evaluation under `workdir`/eval and writes recipe.md/.json
  and the plots to `out_dir` (default: `workdir`)."""
  workdir = pathlib.Path(workdir)
  out_dir = pathlib.Path(out_dir or workdir)
  out_dir.mkdir(parents=True, exist_ok=True)
  times = timings(workdir)
  rows, start = [], None
  extra = sorted(p.name for p in (workdir / "eval").glob("*") if p.name not in STAGES)
  for name in (*STAGES, *extra):  # the recipe's stages, then follow-ups in their own dirs
    answers = workdir / "eval" / name / "answers.jsonl"
    if not (answers.parent / "result.json").is_file():
      continue
    records = [r for r in read_answers(answers) if r.attack is None]
    row = stage_row(name, records, start, times.get(name))
    if name == "start":
      start = row["_rates"]
    rows.append(row)
  if not rows:
    raise FileNotFoundError(f"no finished stage evaluation (eval/<stage>/result.json) under "
                            f"{workdir}")
  rms, history = reward_models(workdir), ppo_history(workdir)
  text = markdown(rows, rms, history)
  (out_dir / "recipe.md").write_text(text + "\n")
  result = {"stages": [{k: v for k, v in r.items() if k != "_rates"} for r in rows],
            "reward_models": rms, "ppo": history, "timings": times}
  (out_dir / "recipe.json").write_text(json.dumps(result, indent=2, default=str))
  result["plots"] = plot(rows, history, out_dir)
  print(text)
  return result


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The recipe's work directory.", required=True)
  flags.DEFINE_string("out_dir", "", "Where recipe.md/json and the plots go (default: "
                      "--workdir).")
  flags.DEFINE_string("start_run", "", "The SFT start (recorded only).")


def main(argv: Sequence[str]) -> None:
  del argv
  write(flags.FLAGS.workdir, flags.FLAGS.out_dir or None)


if __name__ == "__main__":
  define_flags()
  app.run(main)
