"""Expands a grid of config overrides into runs and drives them.

A grid maps config keys to value lists, e.g. the Safety-Tuned LLaMAs grid
  {"data.num_safety": [0, 100, 300, 500, 1000, 1500, 2000],
   "data.safety_format": ["instruction", "question"], "seed": [0]}
Each point becomes one run with its own work directory; a run whose directory holds
`result.json` (a job writes it last, once everything else is saved) is skipped, so a sweep can be
restarted after an interruption. `--mode=local` runs the points one after another here,
`--mode=print` prints one command per run, `--mode=tpu` prints one launch command per run.

  python -m experiments.sweep --config=configs/sft.py:paper_270m --mode=print
"""

from __future__ import annotations

import itertools
import pathlib
import shlex
import subprocess
import sys
from typing import Any, Sequence

from absl import app
from absl import flags

PAPER_GRID: dict[str, list[Any]] = {
    "data.num_safety": [0, 100, 300, 500, 1000, 1500, 2000],
    "data.safety_format": ["instruction", "question"],
    "seed": [0],
}

def define_flags() -> None:
  """Command-line flags; defined only when run as a script so imports stay side-effect free."""
  flags.DEFINE_string("config", "configs/sft.py:paper_270m", "Config (with preset).")
  flags.DEFINE_string("workdir", "runs/safety_sweep", "Parent of the run dirs.")
  flags.DEFINE_enum("mode", "print", ["local", "print", "tpu"], "What to do with runs.")
  flags.DEFINE_list("num_safety", None, "Override the safety counts of the grid.")
  flags.DEFINE_list("formats", None, "Override the safety formats of the grid.")
  flags.DEFINE_list("seeds", None, "Override the seeds of the grid.")
  flags.DEFINE_string("overrides", "", "Extra --config.* flags for every run.")
  flags.DEFINE_string("tpu_name", "alignment-sweep", "TPU VM for --mode=tpu.")
  flags.DEFINE_string("tpu_zone", "us-west4-a", "Zone for --mode=tpu.")


def expand_grid(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the grid's values, in a stable order."""
  keys = list(grid)
  for key in keys:
    if not grid[key]:
      raise ValueError(f"grid axis {key!r} has no values")
  return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(point: dict[str, Any]) -> str:
  """A directory name that says what the run is, e.g. num_safety=300_safety_format=question."""
  return "_".join(f"{key.split('.')[-1]}={value}" for key, value in point.items())


def run_command(config: str, point: dict[str, Any], workdir: pathlib.Path,
                extra: str = "") -> list[str]:
  cmd = [sys.executable, "-m", "alignment.main", f"--config={config}",
         f"--config.workdir={workdir / run_name(point)}"]
  cmd += [f"--config.{key}={value}" for key, value in point.items()]
  return cmd + shlex.split(extra)


def is_finished(workdir: pathlib.Path, point: dict[str, Any]) -> bool:
  return (workdir / run_name(point) / "result.json").exists()


def main(argv: Sequence[str]) -> None:
  del argv
  grid = dict(PAPER_GRID)
  if flags.FLAGS.num_safety:
    grid["data.num_safety"] = [int(v) for v in flags.FLAGS.num_safety]
  if flags.FLAGS.formats:
    grid["data.safety_format"] = list(flags.FLAGS.formats)
  if flags.FLAGS.seeds:
    grid["seed"] = [int(v) for v in flags.FLAGS.seeds]
  workdir = pathlib.Path(flags.FLAGS.workdir)
  points = expand_grid(grid)
  todo = [p for p in points if not is_finished(workdir, p)]
  print(f"{len(points)} runs in the grid, {len(points) - len(todo)} finished, "
        f"{len(todo)} to do", flush=True)
  for i, point in enumerate(todo, 1):
    cmd = run_command(flags.FLAGS.config, point, workdir, flags.FLAGS.overrides)
    if flags.FLAGS.mode == "print":
      print(shlex.join(cmd))
    elif flags.FLAGS.mode == "tpu":
      from launch import tpu_vm  # pylint: disable=import-outside-toplevel
      overrides = " ".join(shlex.quote(c) for c in cmd[4:])
      for launch in tpu_vm.build_commands(["run"], name=flags.FLAGS.tpu_name, zone=flags.FLAGS.tpu_zone,
                                          config=flags.FLAGS.config, overrides=overrides):
        print(shlex.join(launch))
    else:
      print(f"[{i}/{len(todo)}] {run_name(point)}", flush=True)
      subprocess.run(cmd, check=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
