"""Safety-Tuned LLaMAs (Bianchi et al., 2023) end to end on Gemma 3 270M.

For each grid point (number of safety examples K, safety-data format, seed): supervised
fine-tuning, then the safety evaluation of the tuned model into `<run>/eval/`; finally the
sweep report with intervals (experiments/reproduction_report.py) in the sweep directory.
Finished steps are skipped (an SFT run or evaluation whose result.json exists), so an
interrupted reproduction resumes where it stopped, run by run.

Presets (`--preset`):
  paper   the paper's grid: K in {0, 100, ..., 2000} x {instruction, question}, 20k Alpaca,
          configs/sft.py:paper_270m and the full evaluation (an accelerator's job).
  laptop  a grid sized for a 2-core CPU that shows the paper's effects at small scale
          (configs/sft.py:laptop, configs/evaluate.py:laptop; docs/REPRODUCTION.md).
  tiny    three points on a random tiny model, for the test suite.

  python -m experiments.reproduce_safety_tuned_llamas --preset=laptop --dry_run
  nohup python -m experiments.reproduce_safety_tuned_llamas --preset=laptop &   # resumable
  python -m experiments.reproduce_safety_tuned_llamas --num_safety=0,300 --formats=instruction

`--num_safety`, `--formats` and `--seeds`, when given, replace the preset's points by their
product. Subprocesses share a persistent XLA compilation cache (`<workdir>/jax_cache` unless
JAX_COMPILATION_CACHE_DIR is set): every point compiles the same programs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import time
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

from experiments import sweep
from experiments.commands import subprocess_env

EVAL_SUBDIR = "eval"


@dataclasses.dataclass(frozen=True)
class Preset:
  points: tuple[tuple[int, str, int], ...]  # (K, format, seed), in the order they run
  sft_config: str
  eval_config: str
  workdir: str


def _points(spec: Sequence[tuple[Sequence[int], str, Sequence[int]]]
            ) -> tuple[tuple[int, str, int], ...]:
  """(K values, format, seeds) groups -> points, seed-major: every K at the first seed runs
  before any K at the second, so a grid cut short still spans K."""
  seeds = sorted({s for _, _, ss in spec for s in ss})
  return tuple((k, fmt, seed) for seed in seeds for ks, fmt, ss in spec for k in ks
               if seed in ss)


# Laptop grid: 250 Alpaca + K, fractions K/(250+K) of 0 to 38%; 56 steps of 2 x 256 packed
# tokens each (0.8-0.9 of an epoch), 8-10 min a point with its evaluation on 2 cores, 14
# points. Two seeds at every K, dense where the pilot (K = 0/30/45/60 at seed 0) put the jump in
# refusals; the question form at K = 90, where the instruction form refuses clearly, so a
# transfer gap can show. docs/REPRODUCTION.md has the result and what a third seed would add.
LAPTOP_POINTS = _points([
    ((0, 30, 45, 60, 90, 150), "instruction", (0, 1)),
    ((90,), "question", (0, 1)),
])

PRESETS = {
    "paper": Preset(tuple((k, fmt, s) for k in sweep.PAPER_GRID["data.num_safety"]
                          for fmt in sweep.PAPER_GRID["data.safety_format"]
                          for s in sweep.PAPER_GRID["seed"]),
                    "configs/sft.py:paper_270m", "configs/evaluate.py", "runs/safety_sweep"),
    "laptop": Preset(LAPTOP_POINTS, "configs/sft.py:laptop", "configs/evaluate.py:laptop",
                     "runs/stl_laptop"),
    "tiny": Preset(((0, "instruction", 0), (8, "instruction", 0), (8, "question", 0)),
                   "configs/sft.py:tiny", "configs/evaluate.py:tiny", "runs/stl_tiny"),
}


def define_flags() -> None:
  """Defined only when run as a script, so importing the module claims no flag names."""
  flags.DEFINE_enum("preset", "paper", list(PRESETS), "Which grid and configs.")
  flags.DEFINE_string("workdir", "", "Parent of the run directories (default: the preset's).")
  flags.DEFINE_list("num_safety", None, "Numbers of safety examples K (replaces the preset's "
                    "points with the product of these, --formats and --seeds).")
  flags.DEFINE_list("formats", None, "Safety-data formats (instruction, question).")
  flags.DEFINE_list("seeds", None, "Training seeds.")
  flags.DEFINE_integer("steps", 0, "SFT steps per run (0: the SFT config's own).")
  flags.DEFINE_string("sft_config", "", "SFT config (with preset); default: the preset's.")
  flags.DEFINE_string("eval_config", "", "Evaluation config; default: the preset's.")
  flags.DEFINE_string("sft_overrides", "", "Extra --config.* flags for every SFT run.")
  flags.DEFINE_string("eval_overrides", "", "Extra --config.* flags for every evaluation "
                      "(e.g. --config.scoring.harmfulness_rm=runs/reward_safety/reward_model).")
  flags.DEFINE_string("data_dir", "", "Data directory for both jobs (default: "
                      "$ALIGNMENT_DATA_DIR).")
  flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")


def preset_points(preset: Preset) -> list[dict[str, Any]]:
  return [{"data.num_safety": k, "data.safety_format": fmt, "seed": seed}
          for k, fmt, seed in preset.points]


def grid(num_safety: Sequence[int], formats: Sequence[str], seeds: Sequence[int]
         ) -> list[dict[str, Any]]:
  return sweep.expand_grid({"data.num_safety": list(num_safety),
                            "data.safety_format": list(formats), "seed": list(seeds)})


def sft_command(config: str, point: dict[str, Any], workdir: pathlib.Path, steps: int = 0,
                overrides: str = "") -> list[str]:
  extra = (f"--config.train.steps={steps} " if steps else "") + overrides
  return sweep.run_command(config, point, workdir, extra)


def eval_dir(workdir: pathlib.Path, point: dict[str, Any]) -> pathlib.Path:
  return workdir / sweep.run_name(point) / EVAL_SUBDIR


def eval_command(config: str, point: dict[str, Any], workdir: pathlib.Path,
                 overrides: str = "") -> list[str]:
  run_dir = workdir / sweep.run_name(point)
  return [sys.executable, "-m", "alignment.main", f"--config={config}",
          f"--config.run_dir={run_dir}", f"--config.workdir={eval_dir(workdir, point)}",
          *shlex.split(overrides)]


def eval_finished(workdir: pathlib.Path, point: dict[str, Any]) -> bool:
  return (eval_dir(workdir, point) / "result.json").exists()


def report_command(workdir: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "experiments.reproduction_report", f"--sweep_dir={workdir}",
          f"--eval_subdir={EVAL_SUBDIR}"]


def plan(points: Sequence[dict[str, Any]], workdir: pathlib.Path, *, sft_config: str,
         eval_config: str, steps: int = 0, sft_overrides: str = "", eval_overrides: str = ""
         ) -> list[tuple[str, list[str]]]:
  """(what, command) for every step still to do, in order; the report always comes last."""
  steps_todo = []
  for point in points:
    name = sweep.run_name(point)
    if not sweep.is_finished(workdir, point):
      steps_todo.append((f"sft {name}", sft_command(sft_config, point, workdir, steps,
                                                    sft_overrides)))
    if not eval_finished(workdir, point):
      steps_todo.append((f"eval {name}", eval_command(eval_config, point, workdir,
                                                      eval_overrides)))
  steps_todo.append(("report", report_command(workdir)))
  return steps_todo


def record_timing(workdir: pathlib.Path, what: str, seconds: float) -> None:
  """Appends one step's wall time to <workdir>/timings.jsonl (the grid's cost, step by step)."""
  with open(workdir / "timings.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"step": what, "seconds": round(seconds, 1),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def run_steps(todo: Sequence[tuple[str, list[str]]], workdir: pathlib.Path,
              dry_run: bool = False) -> None:
  """Runs (or with `dry_run` prints) each (what, command) in order with the shared compilation
  cache, recording its wall time; the first failure exits naming the step."""
  env = subprocess_env(workdir)
  for i, (what, cmd) in enumerate(todo, 1):
    if dry_run:
      print(shlex.join(cmd))
      continue
    print(f"[{i}/{len(todo)}] {what}: {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(cmd, check=False, env=env).returncode
    if code:
      sys.exit(f"step '{what}' failed with exit status {code}; fix it and rerun the same "
               "command: finished steps are skipped")
    record_timing(workdir, what, time.perf_counter() - start)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  preset = PRESETS[f.preset]
  # Absolute: orbax refuses relative checkpoint paths, and the commands may run elsewhere.
  workdir = pathlib.Path(f.workdir or preset.workdir).absolute()
  if f.num_safety or f.formats or f.seeds:
    points = grid([int(k) for k in (f.num_safety or sweep.PAPER_GRID["data.num_safety"])],
                  f.formats or sweep.PAPER_GRID["data.safety_format"],
                  [int(s) for s in (f.seeds or sweep.PAPER_GRID["seed"])])
  else:
    points = preset_points(preset)
  data = f"--config.data_dir={shlex.quote(f.data_dir)} " if f.data_dir else ""
  todo = plan(points, workdir, sft_config=f.sft_config or preset.sft_config,
              eval_config=f.eval_config or preset.eval_config, steps=f.steps,
              sft_overrides=data + f.sft_overrides, eval_overrides=data + f.eval_overrides)
  print(f"{len(points)} grid points; {len(todo) - 1} steps to do, then the report", flush=True)
  if not f.dry_run:
    workdir.mkdir(parents=True, exist_ok=True)
  run_steps(todo, workdir, f.dry_run)

if __name__ == "__main__":
  define_flags()
  app.run(main)
