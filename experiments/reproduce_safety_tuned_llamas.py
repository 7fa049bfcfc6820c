"""Safety-Tuned LLaMAs (Bianchi et al., 2023) end to end on Gemma 3 270M.

For each number of safety examples K and each safety-data format (instruction / question):
supervised fine-tuning (configs/sft.py:paper_270m), then the safety evaluation of the tuned
model (configs/evaluate.py) into `<run>/eval/`; finally the sweep table and plots
(experiments/safety_report.py) in the sweep directory. Finished steps are skipped (an SFT run
or evaluation whose result.json exists), so an interrupted reproduction resumes where it
stopped.

  python -m experiments.reproduce_safety_tuned_llamas --dry_run      # print the commands
  python -m experiments.reproduce_safety_tuned_llamas                # run everything here
  python -m experiments.reproduce_safety_tuned_llamas --num_safety=0,300 \\
      --formats=instruction --steps=20 --sft_config=configs/sft.py:demo \\
      --eval_config=configs/evaluate.py:quick --workdir=runs/stl_smoke   # CPU smoke run

See docs/REPRODUCTION.md for what to expect.
"""

from __future__ import annotations

import pathlib
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

from experiments import sweep

EVAL_SUBDIR = "eval"


def define_flags() -> None:
  """Defined only when run as a script, so importing the module claims no flag names."""
  flags.DEFINE_string("workdir", "runs/safety_sweep", "Parent of the run directories.")
  flags.DEFINE_list("num_safety", [str(k) for k in sweep.PAPER_GRID["data.num_safety"]],
                    "Numbers of safety examples K.")
  flags.DEFINE_list("formats", sweep.PAPER_GRID["data.safety_format"],
                    "Safety-data formats (instruction, question).")
  flags.DEFINE_list("seeds", [str(s) for s in sweep.PAPER_GRID["seed"]], "Training seeds.")
  flags.DEFINE_integer("steps", 0, "SFT steps per run (0: the SFT config's own).")
  flags.DEFINE_string("sft_config", "configs/sft.py:paper_270m", "SFT config (with preset).")
  flags.DEFINE_string("eval_config", "configs/evaluate.py", "Evaluation config (with preset).")
  flags.DEFINE_string("sft_overrides", "", "Extra --config.* flags for every SFT run.")
  flags.DEFINE_string("eval_overrides", "", "Extra --config.* flags for every evaluation "
                      "(e.g. --config.scoring.harmfulness_rm=runs/reward_safety/reward_model).")
  flags.DEFINE_string("data_dir", "", "Data directory for both jobs (default: "
                      "$ALIGNMENT_DATA_DIR).")
  flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")


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
  return [sys.executable, "-m", "experiments.safety_report", f"--sweep_dir={workdir}",
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


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  # Absolute: orbax refuses relative checkpoint paths, and the commands may run elsewhere.
  workdir = pathlib.Path(f.workdir).absolute()
  points = grid([int(k) for k in f.num_safety], f.formats, [int(s) for s in f.seeds])
  data = f"--config.data_dir={shlex.quote(f.data_dir)} " if f.data_dir else ""
  todo = plan(points, workdir, sft_config=f.sft_config, eval_config=f.eval_config,
              steps=f.steps, sft_overrides=data + f.sft_overrides,
              eval_overrides=data + f.eval_overrides)
  print(f"{len(points)} grid points; {len(todo) - 1} steps to do, then the report", flush=True)
  for i, (what, cmd) in enumerate(todo, 1):
    if f.dry_run:
      print(shlex.join(cmd))
      continue
    print(f"[{i}/{len(todo)}] {what}: {shlex.join(cmd)}", flush=True)
    code = subprocess.run(cmd, check=False).returncode
    if code:
      sys.exit(f"step '{what}' failed with exit status {code}; fix it and rerun the same "
               "command: finished steps are skipped")


if __name__ == "__main__":
  define_flags()
  app.run(main)
