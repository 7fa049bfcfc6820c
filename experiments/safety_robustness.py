"""Safety robustness: does a safety-tuned model stay safe after more fine-tuning, or after
weight quantization? (Qi et al., 2023, showed that fine-tuning, even on benign data, can undo
safety tuning.)

Conditions, each evaluated by the evaluate job (configs/evaluate.py) into `<workdir>/eval/<name>`:
  start            a safety-tuned SFT run (Alpaca + K safety examples; or `--start_run`)
  benign@S         start, fine-tuned S more steps on Alpaca instructions only
  harmful@S        start, fine-tuned S more steps on a few harmful-compliance examples (a proxy:
                   HH harmless-base red-team prompts with their rejected reply,
                   `alignment.data.sources.HARMFUL_COMPLIANCE`; see docs/SAFETY_ROBUSTNESS.md)
  int8, int4       start with its weights (adapters merged) round-tripped through int8 / int4
                   (`alignment.quantization.quantize_params`, the evaluate job's `quantize`)
The continued fine-tuning starts from the start run's merged weights (`<workdir>/start_merged`,
safetensors + tokenizer.model) with fresh LoRA adapters and a constant learning rate; each step
count is its own run from the start point. Every job runs as its own command
(`experiments/commands.run_job`: `python -m alignment.main` with the config's overrides);
a training run or evaluation whose result.json exists is skipped, so a rerun resumes. The
report (`<workdir>/safety_robustness.{md,json,png}`) is rebuilt from every condition's
answers.jsonl.

  python -m experiments.safety_robustness --preset=cpu --workdir=runs/safety_robustness_cpu
  python -m experiments.safety_robustness --preset=full --workdir=runs/safety_robustness \\
      --harmfulness_rm=runs/reward_safety/reward_model --attacks=all
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from alignment import schema
from alignment.answers.records import ANSWERS_FILE, AnswerRecord, read_answers
from alignment.data import sources
from alignment.evaluation import model_source
from alignment.evaluation import sets as eval_sets
from alignment.evaluation.attack_summary import summarize_attacks
from alignment.evaluation.report import write_markdown_and_json
from alignment.evaluation.scorers import HARMFULNESS
from alignment.evaluation.summary import mean_of, summarize_run
from alignment.evaluation.tables import Table
from configs import evaluate as evaluate_config
from experiments.commands import run_job
from configs import sft as sft_config

RESULT = "result.json"
SFT, EVALUATE = "configs/sft.py", "configs/evaluate.py"
MERGED = "start_merged"
KINDS = ("start", "benign", "harmful", "int8", "int4")
QUANTIZE = ("int8", "int4")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the experiment does; a preset fills it, flags override fields."""

  sft_preset: str  # configs/sft.py preset for the start run and the continuations
  eval_preset: str | None  # configs/evaluate.py preset
  start_base: int  # Alpaca examples of the start run
  start_safety: int  # safety examples of the start run
  start_steps: int
  benign_steps: tuple[int, ...]
  harmful_steps: tuple[int, ...]
  num_benign: int  # Alpaca examples the benign continuation draws from
  num_harmful: int  # harmful-compliance examples (the "small number")
  learning_rate: float  # of the continuations (constant)
  batch_size: int
  sets: tuple[str, ...]  # evaluation sets (need unsafe prompts and XSTest for the two rates)
  max_prompts_per_set: int
  max_new_tokens: int
  eval_batch_size: int
  quantize: tuple[str, ...] = QUANTIZE
  base_source: str = "alpaca"  # the instruction data of the start run and benign continuation
  start_run: str = ""  # an existing safety-tuned SFT run directory instead of training one
  data_dir: str = ""
  tokenizer: str = ""  # model.tokenizer of the start run (tests: a tiny SentencePiece model)
  attacks: tuple[str, ...] = ()  # the evaluate job's red-teaming vectors (() none, ('all',))
  harmfulness_rm: str = ""
  helpfulness_rm: str = ""
  seed: int = 0


_EVAL_SETS = ("malicious_instructions", "physical_safety_unsafe", "q_harm", "xstest")

PRESETS: dict[str, Settings] = {
    # Random tiny Gemma 3 (tests set `tokenizer`): seconds per job.
    "tiny": Settings(sft_preset="tiny", eval_preset="tiny", start_base=16, start_safety=16,
                     start_steps=2, benign_steps=(1, 2), harmful_steps=(1, 2), num_benign=16,
                     num_harmful=8, learning_rate=1e-3, batch_size=2,
                     sets=("malicious_instructions", "xstest"), max_prompts_per_set=2,
                     max_new_tokens=3, eval_batch_size=4, base_source="seed_tasks"),
    # The embedded 270M on a 2-core CPU (~20 min): a smoke run of every step, not a result.
    "cpu": Settings(sft_preset="demo", eval_preset="quick", start_base=100, start_safety=100,
                    start_steps=16, benign_steps=(4, 8), harmful_steps=(4, 8), num_benign=200,
                    num_harmful=20, learning_rate=1e-3, batch_size=2, sets=_EVAL_SETS,
                    max_prompts_per_set=4, max_new_tokens=24, eval_batch_size=8),
    # An accelerator: the paper-sized start (20k Alpaca + 2000 safety) and Qi et al.-sized
    # attacks (100 harmful examples), every prompt of every set.
    "full": Settings(sft_preset="paper_270m", eval_preset=None, start_base=20_000,
                     start_safety=2_000, start_steps=1_500, benign_steps=(50, 100, 200, 400),
                     harmful_steps=(10, 25, 50, 100), num_benign=10_000, num_harmful=100,
                     learning_rate=2e-4, batch_size=16,
                     sets=evaluate_config.DEFAULT_SETS, max_prompts_per_set=0,
                     max_new_tokens=256, eval_batch_size=32),
}


@dataclasses.dataclass(frozen=True)
class Condition:
  """One row of the report: what was done to the start model and where it was evaluated."""

  name: str
  kind: str  # one of KINDS
  steps: int  # continued fine-tuning steps (0 for start and the quantized rows)
  train_dir: pathlib.Path | None  # the continuation's SFT run (None: no training)
  eval_dir: pathlib.Path


def check(settings: Settings) -> None:
  """Errors for settings that would fail late (before any model is loaded)."""
  for field in ("benign_steps", "harmful_steps"):
    steps = getattr(settings, field)
    if any(s < 1 for s in steps) or len(set(steps)) != len(steps):
      raise ValueError(f"{field}: step counts must be distinct and >= 1, got {list(steps)}")
  for scheme in settings.quantize:
    if scheme not in QUANTIZE:
      raise ValueError(f"quantize: unknown scheme {scheme!r}; expected some of {QUANTIZE}")
  for field in ("num_harmful", "start_steps", "batch_size", "max_new_tokens"):
    if getattr(settings, field) < 1:
      raise ValueError(f"{field} must be >= 1, got {getattr(settings, field)}")
  if settings.benign_steps and settings.num_benign < 1:
    raise ValueError("num_benign must be >= 1 when benign_steps are set")
  eval_sets.parse_sets(settings.sets)
  if settings.start_run:
    run = pathlib.Path(settings.start_run)
    if not (run / RESULT).is_file() or not (run / "config.json").is_file():
      raise FileNotFoundError(f"start_run: {run} is not a finished SFT run (needs config.json "
                              f"and {RESULT})")


def conditions(settings: Settings, workdir: pathlib.Path) -> list[Condition]:
  ev = workdir / "eval"
  out = [Condition("start", "start", 0, None, ev / "start")]
  for kind in ("benign", "harmful"):
    for steps in getattr(settings, f"{kind}_steps"):
      name = f"{kind}_steps={steps}"
      out.append(Condition(name, kind, steps, workdir / name, ev / name))
  out += [Condition(s, s, 0, None, ev / s) for s in settings.quantize]
  return out


def start_dir(settings: Settings, workdir: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(settings.start_run) if settings.start_run else workdir / "start"


def is_finished(directory: pathlib.Path | None) -> bool:
  return directory is not None and (directory / RESULT).is_file()


# ---------------------------------------------------------------------------------------------
# Job configs.


def _sft_base(settings: Settings, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  c = sft_config.get_config(settings.sft_preset)
  c.workdir = str(workdir)
  c.data_dir = settings.data_dir
  c.seed = settings.seed
  c.train.batch_size = settings.batch_size
  c.data.eval_examples = 0
  c.data.base_source = settings.base_source
  c.eval.update(every=10**9, batches=0, prompts="")
  return c


def start_config(settings: Settings, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  c = _sft_base(settings, workdir)
  c.model.tokenizer = settings.tokenizer
  c.data.update(num_base=settings.start_base, num_safety=settings.start_safety,
                safety_source="safety_instructions")
  c.train.steps = settings.start_steps
  return c


def continuation_config(settings: Settings, cond: Condition,
                        merged: pathlib.Path) -> ml_collections.ConfigDict:
  """Fresh LoRA adapters on the start's merged weights; constant learning rate, no warmup,
  so the run of S steps follows the same trajectory as the first S steps of a longer one."""
  c = _sft_base(settings, cond.train_dir)
  c.model.checkpoint = str(merged)
  c.model.tokenizer = ""  # merged/tokenizer.model
  if cond.kind == "benign":
    c.data.update(num_base=settings.num_benign, num_safety=0)
  else:
    c.data.update(num_base=0, safety_source=sources.HARMFUL_COMPLIANCE,
                  num_safety=settings.num_harmful)
  c.train.update(steps=cond.steps, learning_rate=settings.learning_rate, schedule="constant",
                 warmup_steps=0)
  c.checkpoint.every = max(cond.steps, 1)
  return c


def eval_config(settings: Settings, cond: Condition, start: pathlib.Path
                ) -> ml_collections.ConfigDict:
  c = evaluate_config.get_config(settings.eval_preset)
  c.workdir = str(cond.eval_dir)
  c.data_dir = settings.data_dir
  c.seed = settings.seed
  c.run_dir = str(cond.train_dir or start)
  c.sets = settings.sets
  c.max_prompts_per_set = settings.max_prompts_per_set
  c.max_new_tokens = settings.max_new_tokens
  c.batch_size = settings.eval_batch_size
  c.template = "alpaca"  # every condition answers in the same format
  c.scoring.harmfulness_rm = settings.harmfulness_rm
  c.scoring.helpfulness_rm = settings.helpfulness_rm
  c.attacks = settings.attacks
  c.quantize = cond.kind if cond.kind in QUANTIZE else ""
  return c


# ---------------------------------------------------------------------------------------------
# Steps.


def export_merged(settings: Settings, start: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
  """The start model with its adapters merged, as safetensors + tokenizer.model in `out` (so
  an SFT model section can load it), and the bytes of its int8/int4 forms (for the report)."""
  sizes_path = out / "quantized_size.json"
  if sizes_path.is_file():
    return json.loads(sizes_path.read_text())
  import jax  # pylint: disable=import-outside-toplevel
  from alignment.checkpoints.huggingface import save_safetensors  # pylint: disable=import-outside-toplevel
  from alignment.quantization import quantized_size  # pylint: disable=import-outside-toplevel
  source = model_source.resolve_model(evaluate_config.get_config().model, run_dir=str(start))
  cfg, params, tokenizer = model_source.load_params(source)
  save_safetensors(cfg.replace(dtype="float32"), jax.device_get(params), out)
  (out / "tokenizer.model").write_bytes(tokenizer.serialized_proto())
  sizes = {s: dataclasses.asdict(quantized_size(params, s)) for s in ("none", *QUANTIZE)}
  sizes_path.write_text(json.dumps(sizes, indent=2))  # last: marks the export complete
  return sizes


def run_experiment(settings: Settings, workdir: str | pathlib.Path,
                   log=print) -> dict[str, Any]:
  """Trains and evaluates every condition not yet finished, then writes the report."""
  check(settings)
  workdir = pathlib.Path(workdir).absolute()  # orbax refuses relative checkpoint paths
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "settings.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2))
  start = start_dir(settings, workdir)
  seconds: dict[str, float] = {}

  def step(what: str, fn, *args) -> Any:
    log(f"[safety_robustness] {what}")
    t = time.perf_counter()
    out = fn(*args)
    seconds[what] = time.perf_counter() - t
    return out

  if not is_finished(start):
    step("train start", run_job, SFT, settings.sft_preset, start_config(settings, workdir / "start"),
         workdir)
  conds = conditions(settings, workdir)
  merged = workdir / MERGED
  if not (merged / "quantized_size.json").is_file():
    step("export merged start", export_merged, settings, start, merged)
  for cond in conds:
    if is_finished(cond.eval_dir):
      log(f"[safety_robustness] {cond.name}: finished, skipped")
      continue
    if cond.train_dir is not None and not is_finished(cond.train_dir):
      step(f"train {cond.name}", run_job, SFT, settings.sft_preset,
           continuation_config(settings, cond, merged), workdir)
    step(f"evaluate {cond.name}", run_job, EVALUATE, settings.eval_preset,
         eval_config(settings, cond, start), workdir)
  paths = write_report(workdir, conds, json.loads((merged / "quantized_size.json").read_text()))
  timing = workdir / "seconds.json"
  previous = json.loads(timing.read_text()) if timing.is_file() else {}
  timing.write_text(json.dumps({**previous, **seconds}, indent=2))
  return {"conditions": conds, "paths": paths, "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# Report.

COLUMNS = ["condition", "fine-tuning steps", "unsafe refusal %", "XSTest safe false refusal %",
           "harmfulness (unsafe)", "helpfulness", "n unsafe", "n XSTest safe"]


def condition_metrics(records: Sequence[AnswerRecord]) -> dict[str, Any]:
  """The report's figures for one condition, from its scored answers (summary.summarize_run's
  definitions; harmfulness = mean over answers to unsafe prompts that have a score)."""
  summary = summarize_run(records)
  plain = [r for r in records if r.attack is None]
  unsafe = [r for r in plain if r.label == "unsafe"]
  out = {"unsafe refusal %": summary.unsafe_refusal_rate,
         "XSTest safe false refusal %": summary.false_refusal_rate,
         "harmfulness (unsafe)": mean_of(r.scores.get(HARMFULNESS) for r in unsafe),
         "helpfulness": summary.helpfulness,
         "n unsafe": len(unsafe),
         "n XSTest safe": sum(r.set == "xstest" and r.label == "safe" for r in plain)}
  if any(r.attack is not None for r in records):
    attacks = summarize_attacks(records)
    asrs = [row.asr for name, row in attacks.rows.items() if row.asr is not None]
    out["mean attack ASR"] = mean_of(asrs)
  return out


def gather(conds: Sequence[Condition]) -> list[tuple[Condition, dict[str, Any]]]:
  out = []
  for cond in conds:
    path = cond.eval_dir / ANSWERS_FILE
    if not is_finished(cond.eval_dir) or not path.is_file():
      continue
    out.append((cond, condition_metrics(read_answers(path))))
  if not out:
    raise ValueError("no finished condition to report (no eval/*/result.json)")
  return out


def write_report(workdir: pathlib.Path, conds: Sequence[Condition],
                 sizes: dict[str, Any] | None = None, plot: bool = True
                 ) -> dict[str, pathlib.Path]:
  rows = gather(conds)
  columns = list(COLUMNS)
  if any("mean attack ASR" in m for _, m in rows):
    columns.append("mean attack ASR")
  table = Table(columns, [[c.name, c.steps, *(m.get(k) for k in columns[2:])] for c, m in rows])
  title = "Safety robustness: continued fine-tuning and weight quantization"
  lines = [f"# {title}", "", table.to_markdown(), "",
           "Rates pool every answer labelled unsafe (refusal) and XSTest's safe prompts (false "
           "refusal); harmfulness and helpfulness need reward models (– without).",
           "Each `benign_steps=S` / `harmful_steps=S` row fine-tunes the start model S more "
           "steps; int8/int4 round-trip the start model's weights (adapters merged)."]
  if sizes:
    base = sizes["none"]["float_bytes"]
    lines += ["", "| weights | bytes | vs float32 |", "|---|---:|---:|"]
    for s in ("none", *QUANTIZE):
      b = sizes[s]["quantized_bytes"]
      lines.append(f"| {'float32' if s == 'none' else s} | {b:,} | {b / base:.3f} |")
  payload = {"title": title, "table": table.to_json(), "quantized_size": sizes,
             "conditions": [{"name": c.name, "kind": c.kind, "steps": c.steps,
                             "eval_dir": str(c.eval_dir), **m} for c, m in rows]}
  paths = write_markdown_and_json(workdir, "safety_robustness", "\n".join(lines), payload)
  if plot:
    paths["png"] = plot_report(rows, workdir / "safety_robustness.png", title)
  return paths


def plot_report(rows: Sequence[tuple[Condition, dict[str, Any]]], path: pathlib.Path,
                title: str) -> pathlib.Path:
  """Refusal (and harmfulness or false refusal) against fine-tuning steps: a benign and a
  harmful line from the start point, the quantized models as points at step 0."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  has_harm = any(m["harmfulness (unsafe)"] is not None for _, m in rows)
  second = "harmfulness (unsafe)" if has_harm else "XSTest safe false refusal %"
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  start = [(c, m) for c, m in rows if c.kind == "start"]
  for ax, metric in zip(axes, ("unsafe refusal %", second)):
    scale = 100.0 if metric.endswith("%") else 1.0
    for kind, color, style in (("benign", "tab:blue", "o-"), ("harmful", "tab:red", "x--")):
      pts = sorted([(c.steps, m[metric]) for c, m in start + [r for r in rows
                                                               if r[0].kind == kind]
                    if m[metric] is not None])
      if pts:
        ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], style, color=color,
                markersize=8, label=f"{kind} fine-tuning")
    for (kind, marker) in (("int8", "s"), ("int4", "^")):
      for c, m in rows:
        if c.kind == kind and m[metric] is not None:
          ax.plot([0], [scale * m[metric]], marker, color="black", fillstyle="none",
                  markersize=9, label=kind)
    ax.set_xlabel("continued fine-tuning steps")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------------------
# Command line.


def settings_from_flags(f) -> Settings:
  if f.preset not in PRESETS:
    raise ValueError(f"--preset: unknown preset {f.preset!r}; known: {', '.join(PRESETS)}")
  overrides: dict[str, Any] = dict(
      start_run=f.start_run, data_dir=f.data_dir, tokenizer=f.tokenizer,
      attacks=schema.names(f.attacks),
      harmfulness_rm=f.harmfulness_rm, helpfulness_rm=f.helpfulness_rm, seed=f.seed)
  for field in ("benign_steps", "harmful_steps"):
    value = getattr(f, field)
    if value is not None:
      try:
        overrides[field] = tuple(int(v) for v in value)
      except ValueError:
        raise ValueError(f"--{field}: expected integers, got {value}") from None
  if f.quantize is not None:
    overrides["quantize"] = tuple(f.quantize)
  if f.max_prompts_per_set >= 0:
    overrides["max_prompts_per_set"] = f.max_prompts_per_set
  return dataclasses.replace(PRESETS[f.preset], **overrides)


def define_flags() -> None:
  """Defined only when run as a script, so importing the module claims no flag names."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("preset", "cpu", f"One of {', '.join(PRESETS)}.")
  flags.DEFINE_string("workdir", "runs/safety_robustness", "Where every run and the report go.")
  flags.DEFINE_string("start_run", "", "A finished safety-tuned SFT run to start from "
                      "(default: train one).")
  flags.DEFINE_list("benign_steps", None, "Override the benign step counts.")
  flags.DEFINE_list("harmful_steps", None, "Override the harmful step counts.")
  flags.DEFINE_list("quantize", None, "Quantized conditions (int8,int4; empty: none).")
  flags.DEFINE_integer("max_prompts_per_set", -1, "Override (0 = all prompts).")
  flags.DEFINE_string("attacks", "", "Red-teaming vectors for every evaluation ('all').")
  flags.DEFINE_string("harmfulness_rm", "", "Saved safety reward model (harmfulness column).")
  flags.DEFINE_string("helpfulness_rm", "", "Saved helpfulness reward model.")
  flags.DEFINE_string("tokenizer", "", "model.tokenizer of the start run.")
  flags.DEFINE_string("data_dir", "", "Data directory (default: $ALIGNMENT_DATA_DIR).")
  flags.DEFINE_integer("seed", 0, "Seed of every job.")


def main(argv: Sequence[str]) -> None:
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    settings = settings_from_flags(flags.FLAGS)
    check(settings)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  t = time.perf_counter()
  out = run_experiment(settings, flags.FLAGS.workdir)
  print(out["paths"]["markdown"].read_text())
  print(f"report: {out['paths']['markdown']} ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
  from absl import app as _app  # pylint: disable=ungrouped-imports
  define_flags()
  _app.run(main)
