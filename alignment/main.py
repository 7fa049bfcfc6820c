"""Entry point: `python -m alignment.main --config=configs/<x>.py[:preset] [--config.a.b=v]`.

Every config file defines `get_config(preset=None)` returning an ml_collections ConfigDict
with a `job` field naming a module in `alignment.jobs`; that module's `run(config)` does the
work. Configs are locked before overrides apply, so a misspelt key or a value of the wrong
type stops the program before any work starts, with the key named in the message.
`--show_config` prints every key of the config (overrides applied) and exits: the names to
override, and what a run would use.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import logging
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags

from alignment import schema
from alignment.training.preemption import Preempted

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, optionally followed by ':preset'.",
    lock_config=True)
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print every key of the config (overrides applied) and exit.")


def config_lines(config, prefix: str = "") -> list[str]:
  """'a.b = value' for every leaf of a ConfigDict, keys sorted within each section."""
  lines = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      lines += config_lines(value, f"{prefix}{key}.")
    else:
      lines.append(f"{prefix}{key} = {value!r}")
  return lines


def run_job(config) -> None:
  """Imports `alignment.jobs.<config.job>` and runs it."""
  job = config.get("job")
  if not job:
    raise ValueError("the config has no 'job' field naming what to run")
  try:
    module = importlib.import_module(f"alignment.jobs.{job}")
  except ModuleNotFoundError as e:
    if e.name == f"alignment.jobs.{job}":
      raise ValueError(f"unknown job {job!r}: no module alignment/jobs/{job}.py") from e
    raise
  module.run(config)


def override_paths(argv: list[str]) -> list[str]:
  """The dotted key paths of the `--config.a.b=v` (and `--noconfig.a.b`) overrides in argv."""
  paths = []
  for arg in argv[1:]:
    name = arg.split("=", 1)[0].lstrip("-")
    for prefix in ("config.", "noconfig."):
      if name.startswith(prefix):
        paths.append(name[len(prefix):])
  return paths


def unknown_key(config: ml_collections.ConfigDict, path: str) -> str | None:
  """'unknown config key 'a.b'. Did you mean 'a.c'?' for the first key of the dotted `path`
  that `config` lacks (the close match by difflib, among that section's keys), else None."""
  node, walked = config, []
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return None  # below a value: not an unknown key (ml_collections' message says what)
    if key not in node:
      close = difflib.get_close_matches(key, list(node.keys()), n=1)
      hint = f" Did you mean {'.'.join(walked + close)!r}?" if close else ""
      return f"unknown config key {'.'.join(walked + [key])!r}.{hint}"
    node, walked = node[key], walked + [key]
  return None


def _config_spec(argv: list[str]) -> str | None:
  """The value of --config (`path[:preset]`) in argv."""
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config(argv: list[str]) -> ml_collections.ConfigDict | None:
  """The config `--config` names (loaded by the flag's own parser), before overrides; None
  when there is none or it fails to load (then the flag's own error stands)."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  try:
    config = flags.FLAGS["config"].parser.parse(spec)
  except (OSError, TypeError, ValueError):
    return None
  return config if isinstance(config, ml_collections.ConfigDict) else None


def override_error(argv: list[str]) -> str | None:
  """The unknown-key message for the first override naming a key the config lacks, or None."""
  config = _load_config(argv)
  if config is None:
    return None
  return next(filter(None, (unknown_key(config, p) for p in override_paths(argv))), None)


def _value_at(config: ml_collections.ConfigDict, path: str):
  node = config
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      return None
    node = node[key]
  return node


def spell_tuples(argv: list[str]) -> list[str]:
  """argv with `--config.k=a,b` written `--config.k=('a', 'b')` where k holds a tuple.

  ml_collections reads a bare comma list for a tuple key as one item, ('a,b',), and refuses
  one with a path in it (`--config.sets=xstest,/data/probes.csv`); a Python literal is kept.
  """
  overrides = [(i, arg) for i, arg in enumerate(argv) if i and arg.startswith("--config.")
               and "=" in arg]
  config = _load_config(argv) if overrides else None
  if config is None:
    return argv
  out = list(argv)
  for i, arg in overrides:
    name, value = arg.split("=", 1)
    if not isinstance(_value_at(config, name[len("--config."):]), tuple):
      continue
    try:
      ast.literal_eval(value)
    except (SyntaxError, ValueError):
      out[i] = f"{name}={schema.names(value)!r}"
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags, turning a bad config override into a short error naming the key."""
  try:
    return flags.FLAGS(spell_tuples(argv))
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    detail = override_error(argv) or " ".join(
        str(e).replace("\\n", " ").replace("\\", "").split())
    sys.exit(f"config error: {detail}\n  overrides given: {' '.join(overrides) or 'none'}")


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter of libraries (orbax logs every checkpoint option) from the console."""

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = any(f"/{lib}/" in record.pathname for lib in ("orbax", "etils", "grain"))
    return record.levelno >= logging.WARNING or not noisy


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _SHOW_CONFIG.value:
    print("\n".join(config_lines(_CONFIG.value)))
    return
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    run_job(_CONFIG.value)
  except Preempted as stopped:
    # Non-zero, as a signal's death would be, so a scheduler reruns the job (which resumes).
    print(f"preempted: {stopped}", file=sys.stderr)
    sys.exit(128 + stopped.signum)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=parse_flags)
