"""Expands a grid of config overrides into runs and drives them.

A grid maps config keys to value lists, e.g. the Safety-Tuned LLaMAs grid
  {"data.num_safety": [0, 100, 300, 500, 1000, 1500, 2000],
   "data.safety_format": ["instruction", "question"], "seed": [0]}
Each point becomes one run with its own work directory; a run whose directory holds
a complete `result.json` (a job writes it last, atomically, once everything else is saved) and
a config.json matching the point is skipped, so a sweep can be restarted after an
interruption. `--mode=local` runs the points one after another here (a point that ends
preempted, exit 143 with summary status "preempted", is rerun on the same command up to
`--max_restarts` times: it resumes from the checkpoint it saved), `--mode=print` prints one
command per run, `--mode=tpu` prints one launch command per run.

  python -m experiments.sweep --config=configs/sft.py:paper_270m --mode=print
"""

from __future__ import annotations

import itertools
import json
import pathlib
import shlex
import sys
from typing import Any, Sequence

from absl import app
from absl import flags

from launch import restart, tpu_vm

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
  flags.DEFINE_integer("max_restarts", restart.DEFAULT_MAX_RESTARTS,
                       "--mode=local: reruns of a point that ended preempted.")


def expand_grid(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the grid's values, in a stable order."""
  keys = list(grid)
  for key in keys:
    if not grid[key]:
      raise ValueError(f"grid axis {key!r} has no values")
  return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


# Characters that would let a grid value (`--formats=../../x`) name a directory outside the
# sweep's workdir.
_UNSAFE_IN_NAMES = ("/", "\\", "\0", "..")


def run_name(point: dict[str, Any]) -> str:
  """A directory name that says what the run is, e.g. num_safety=300_safety_format=question.

  Raises ValueError for a key or value holding a path separator or '..', so that every run
  directory is a child of the sweep's workdir.
  """
  for key, value in point.items():
    for text in (key.split(".")[-1], str(value)):
      bad = [c for c in _UNSAFE_IN_NAMES if c in text]
      if bad or not text.strip():
        raise ValueError(f"grid {key}={value!r}: a run directory name may not hold "
                         f"{' or '.join(map(repr, bad)) or 'an empty part'}")
  return "_".join(f"{key.split('.')[-1]}={value}" for key, value in point.items())


def run_command(config: str, point: dict[str, Any], workdir: pathlib.Path,
                extra: str = "") -> list[str]:
  cmd = [sys.executable, "-m", "alignment.main", f"--config={config}",
         f"--config.workdir={workdir / run_name(point)}"]
  cmd += [f"--config.{key}={value}" for key, value in point.items()]
  return cmd + shlex.split(extra)


def _at(tree: Any, dotted: str) -> Any:
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return _MISSING
    tree = tree[part]
  return tree


_MISSING = object()


def is_finished(workdir: pathlib.Path, point: dict[str, Any]) -> bool:
  """Whether the point's run is done: its result.json parses completely (status "completed"
  where it records one) and its config.json holds the point's value at each grid key.

  A result.json cut short by a crash, or a directory of this name trained with other values
  (a renamed grid, a hand-copied run), is not finished: the point runs again, and the job's
  resume check names any config difference.
  """
  run = workdir / run_name(point)
  try:
    result = json.loads((run / "result.json").read_text(encoding="utf-8"))
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return False
  if not isinstance(result, dict) or not isinstance(config, dict):
    return False
  train = result.get("train")
  if isinstance(train, dict) and train.get("status", "completed") != "completed":
    return False
  for key, value in point.items():
    saved = _at(config, key)
    # Flag values arrive as strings ("300") where config.json holds 300.
    if saved is _MISSING or (saved != value and str(saved) != str(value)):
      return False
  return True


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
  try:
    todo = [p for p in points if not is_finished(workdir, p)]
  except ValueError as error:  # a grid value that cannot name a run directory
    sys.exit(f"sweep: {error}")
  print(f"{len(points)} runs in the grid, {len(points) - len(todo)} finished, "
        f"{len(todo)} to do", flush=True)
  for i, point in enumerate(todo, 1):
    cmd = run_command(flags.FLAGS.config, point, workdir, flags.FLAGS.overrides)
    if flags.FLAGS.mode == "print":
      print(shlex.join(cmd))
    elif flags.FLAGS.mode == "tpu":
      overrides = " ".join(shlex.quote(c) for c in cmd[4:])
      for launch in tpu_vm.build_commands(["run"], name=flags.FLAGS.tpu_name, zone=flags.FLAGS.tpu_zone,
                                          config=flags.FLAGS.config, overrides=overrides):
        print(shlex.join(launch))
    else:
      print(f"[{i}/{len(todo)}] {run_name(point)}", flush=True)
      restart.check_run(cmd, flags.FLAGS.max_restarts, workdir=workdir / run_name(point))


if __name__ == "__main__":
  define_flags()
  app.run(main)
