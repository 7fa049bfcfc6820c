"""Whether a run directory that already holds checkpoints belongs to the run now starting.

Resuming a workdir with another config (LoRA rank, seed, data) used to mix two runs into one
directory. `check_resume` compares the saved config.json (and, where a job has one, its data
fingerprint) with the new ones before anything in the directory is rewritten, and refuses
with every differing key named, unless `config.resume` says to continue with the changes, in
which case they are appended to resume_history.json.

Keys in `IGNORED_ON_RESUME` may change between runs of one directory: they set how long a
run goes or how it reports, not what it trains (`train.steps` also stretches the schedule:
extending a run is the point of resuming it). `mesh` and `distributed` are ignored because a
checkpoint restores onto any mesh. `lora.unmerged` only chooses how the same function is
computed (adapters merged into the weights, or beside them). The reward job's `combine`
section was read by nothing and is gone; runs saved with it resume.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from alignment import schema
from alignment.files import atomic

RESUME_CHOICES = ("same_run", "continue_with_changes")

# Exact dotted keys, or a section prefix ending in ".".
IGNORED_ON_RESUME = (
    "resume", "workdir", "train.steps", "train.iterations", "train.log_every",
    "train.progress_bar", "checkpoint.every", "checkpoint.keep", "checkpoint.async_save",
    "eval.every", "mesh.", "distributed.", "lora.unmerged", "combine.",
)

# Keys added after runs were written, with the value that means what their absence meant: a
# run saved before the key existed resumes when the new config leaves it at that value.
ADDED_KEYS = {
    "data.columns": "",  # user files' column mapping (#16)
    "data.template": "",  # reward / DPO prompt template ('' = prompts as stored)
    "columns": "",  # evaluate / template_eval
    "eval.before_after": False,  # sft: answers at step 0 and a before/after table
}

HISTORY_FILE = "resume_history.json"


class RunMismatchError(ValueError):
  """The workdir holds checkpoints of a run whose config or data differ from this one's."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{"a.b": value} for a nested dict."""
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _ignored(key: str) -> bool:
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in IGNORED_ON_RESUME)


_ABSENT = "(absent)"


def differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (old, new)} for every key that differs and may not change on resume."""
  old_flat, new_flat = flatten(old), flatten(new)
  changed = {}
  for key in sorted(set(old_flat) | set(new_flat)):
    before, after = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
    if before == _ABSENT and key in ADDED_KEYS and after == ADDED_KEYS[key]:
      continue
    if not _same(before, after) and not _ignored(key):
      changed[key] = (before, after)
  return changed


def _same(before: Any, after: Any) -> bool:
  """Equal, or one list of names written two ways: runs saved before the list keys became
  tuples hold "a,b" where a new config.json holds ["a", "b"] (and a command line's `a,b` is
  saved as ["a,b"]). Two strings are compared as they are: one of them must be a list."""
  if before == after:
    return True
  if not (isinstance(before, list) or isinstance(after, list)):
    return False
  names = _names(before)
  return names is not None and names == _names(after)


def _names(value: Any) -> tuple[str, ...] | None:
  """The names in a string or a list of strings (`schema.names`); None for other values."""
  if isinstance(value, str) or (isinstance(value, list)
                                and all(isinstance(v, str) for v in value)):
    return schema.names(value)
  return None


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  """Finalized checkpoint steps under workdir/checkpoints (orbax names them by number)."""
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def check_resume(workdir: pathlib.Path, config: dict, mode: str = "same_run",
                 data: dict | None = None, data_file: str | None = None) -> dict:
  """Refuses (RunMismatchError) to resume a run whose config or data changed, unless
  `mode` is 'continue_with_changes'; returns the changes found ({} for a fresh run).
  Writes nothing: the caller records accepted changes (`record_resume`) once it holds the
  run's lock.

  `data` is this run's data fingerprint, compared with the one saved in `data_file` (a JSON
  file in the workdir) under the prefix "data_fingerprint.".
  """
  if mode not in RESUME_CHOICES:
    raise ValueError(f"config.resume={mode!r}: must be one of {', '.join(RESUME_CHOICES)}")
  workdir = pathlib.Path(workdir)
  steps = checkpoint_steps(workdir)
  saved_config = workdir / "config.json"
  if not steps or not saved_config.is_file():
    return {}
  changes = differences(json.loads(saved_config.read_text()), config)
  if data is not None and data_file and (workdir / data_file).is_file():
    saved = json.loads((workdir / data_file).read_text())
    changes.update(differences({"data_fingerprint": {k: saved.get(k, _ABSENT) for k in data}},
                               {"data_fingerprint": data}))
  if not changes:
    return {}
  lines = "\n".join(f"  {key}: {before!r} -> {after!r}" for key, (before, after) in
                    changes.items())
  if mode == "same_run":
    raise RunMismatchError(
        f"{workdir} holds checkpoints (steps {steps}) of a run with another config or data:\n"
        f"{lines}\nUse a new workdir, restore the old values, or set "
        "config.resume=continue_with_changes to resume with these changes (they are then "
        f"recorded in {HISTORY_FILE}).")
  return changes


def record_resume(workdir: pathlib.Path, changes: dict[str, tuple[Any, Any]]) -> None:
  """Appends accepted resume changes (from `check_resume`) to resume_history.json."""
  if not changes:
    return
  workdir = pathlib.Path(workdir)
  history_path = workdir / HISTORY_FILE
  history = json.loads(history_path.read_text()) if history_path.is_file() else []
  history.append({"resumed_from_step": checkpoint_steps(workdir)[-1],
                  "changes": {k: {"old": b, "new": a} for k, (b, a) in changes.items()}})
  atomic.write_json(history_path, history)
