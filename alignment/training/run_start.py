"""The start of a run, before any work: its numbers checked, its directory claimed.

Why here: a learning rate of 1e39 turns the parameters to NaN in one step and a count of 0
used to surface as an optax message, so both are refused before the model loads; and a run
directory is checked against the checkpoints in it (`run_identity.check_resume`) and locked
(`run_lock`) before config.json is rewritten, so a second process or a different run stops
before writing anything. Everything here reads the config as plain JSON data (what
config.json holds), not as a ConfigDict.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

from alignment.files import atomic
from alignment.training import run_identity, run_lock

MAX_LEARNING_RATE = 1e3  # far above any rate that trains; larger ones are typos

# Counts a job divides by or loops up to: 0 used to surface as an optax message
# (train.steps) or as "cannot schedule new futures after interpreter shutdown" (eval.every).
POSITIVE_COUNTS = ("train.steps", "train.iterations", "train.grad_accum_steps",
                   "train.log_every", "train.batch_size", "eval.every", "checkpoint.every")


def check_learning_rates(run_config: dict[str, Any]) -> None:
  """Refuses a learning rate that is not finite, not > 0 or above MAX_LEARNING_RATE, naming
  the key."""
  for key, value in run_identity.flatten(run_config).items():
    if key.split(".")[-1] == "learning_rate" and isinstance(value, (int, float)):
      if not (math.isfinite(value) and 0 < value <= MAX_LEARNING_RATE):
        raise ValueError(f"config.{key}={value}: a learning rate must be finite, > 0 and "
                         f"<= {MAX_LEARNING_RATE:g}")


def check_counts(run_config: dict[str, Any]) -> None:
  """Refuses a count in POSITIVE_COUNTS (where the config has it) that is not an integer
  >= 1, and fewer train.steps than train.grad_accum_steps (no optimizer step), naming the
  key."""
  for key in POSITIVE_COUNTS:
    section, field = key.split(".")
    if isinstance(run_config.get(section), dict) and field in run_config[section]:
      value = run_config[section][field]
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{key}={value!r}: must be an integer >= 1")
  train = run_config.get("train")
  if isinstance(train, dict) and "steps" in train and train.get(
      "grad_accum_steps", 1) > train["steps"]:
    raise ValueError(f"config.train.steps={train['steps']} is fewer than config.train."
                     f"grad_accum_steps={train['grad_accum_steps']}: no optimizer step would run")


def open_workdir(workdir: pathlib.Path, config_json: str) -> None:
  """Creates `workdir`, takes its lock (one process per workdir) and writes config.json;
  the whole start of a job without checkpoints (evaluations)."""
  workdir.mkdir(parents=True, exist_ok=True)
  run_lock.hold(workdir)  # before any write; released when the job's `run` returns
  atomic.write_text(workdir / "config.json", config_json)


def open_run_dir(workdir: pathlib.Path, run_config: dict[str, Any], config_json: str,
                 resume: str = "same_run", data_fingerprint: dict | None = None,
                 data_file: str | None = None) -> None:
  """`open_workdir` for a training run: a workdir with checkpoints is checked first (against
  `run_config` and the data fingerprint saved in `data_file`), so config.json is rewritten
  only for the same run (or the changes `resume` allows, recorded)."""
  changes = run_identity.check_resume(workdir, run_config, resume, data_fingerprint, data_file)
  workdir.mkdir(parents=True, exist_ok=True)
  run_lock.hold(workdir)
  run_identity.record_resume(workdir, changes)
  atomic.write_text(workdir / "config.json", config_json)
