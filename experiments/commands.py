"""Jobs as commands: an experiment builds a job's config in Python and runs it as
`python -m alignment.main --config=<file>:<preset> --config.a.b=v ...`, in its own process.

A job run this way is exactly what a user would type (its config.json and its checkpoints
are the same), and the experiment never imports `alignment.jobs`. The overrides are the
config's differences from its preset, so a command line stays short and readable.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]


def _leaves(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def overrides(config: ml_collections.ConfigDict, preset: ml_collections.ConfigDict
              ) -> list[str]:
  """`--config.k=v` for every leaf where `config` differs from `preset` (sorted by key).

  A key the preset lacks, or one whose preset value is None (the command line cannot give a
  None field a type), is an error naming the key. A tuple is written as its repr,
  `('xstest', '/x/probes.csv')`, which main reads back as the same tuple (and which keeps a
  name with a comma in it whole).
  """
  new, old = _leaves(config), _leaves(preset)
  args = []
  for key in sorted(new):
    value = new[key]
    if key not in old:
      raise ValueError(f"config.{key}: not a key of the preset; a command line cannot add it")
    if value == old[key] and type(value) is type(old[key]):
      continue
    if old[key] is None or value is None:
      raise ValueError(f"config.{key}: {old[key]!r} -> {value!r} cannot be written as an "
                       "override (None has no type on the command line)")
    args.append(f"--config.{key}={value}")
  return args


def job_command(config_file: str, preset: str | None, config: ml_collections.ConfigDict
                ) -> list[str]:
  """The command that runs `config`, which was built from `config_file`'s `preset`."""
  module = _config_module(config_file)
  base = module.get_config(preset)
  spec = f"{config_file}:{preset}" if preset else config_file
  return [sys.executable, "-m", "alignment.main", f"--config={spec}", *overrides(config, base)]


def _config_module(config_file: str):
  """The config file's module (configs/x.py -> configs.x), as main's loader would read it."""
  path = pathlib.Path(config_file)
  if path.suffix != ".py" or not (REPO / path).is_file():
    raise FileNotFoundError(f"{config_file}: not a config file under {REPO}")
  return importlib.import_module(".".join(path.with_suffix("").parts))


def subprocess_env(workdir: pathlib.Path) -> dict[str, str]:
  """This environment plus a persistent compilation cache shared by every step."""
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(workdir) / "jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return env


def run_job(config_file: str, preset: str | None, config: ml_collections.ConfigDict,
            workdir: pathlib.Path) -> None:
  """Runs the job in a subprocess (cwd: the repository); a failure raises, naming the command."""
  cmd = job_command(config_file, preset, config)
  code = subprocess.run(cmd, check=False, cwd=REPO, env=subprocess_env(workdir)).returncode
  if code:
    raise RuntimeError(f"exit status {code}: {' '.join(cmd)}")
