"""Evaluation sets by name or file: which to answer, and their prompts (seeded subsets).

Shared by every job that answers sets (evaluate, template_eval) and by experiments that
check their settings before starting one.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from alignment import schema
from alignment.data import sources, user_files
from alignment.data.records import EvalPrompt


def parse_sets(sets: str | Sequence[str]) -> list[str]:
  """Set names and files (a tuple, or a comma-joined string: `schema.names`); an unknown or
  repeated one is an error.

  A file (a name containing '/' or ending in .csv, .jsonl, ...: `alignment.data.user_files`)
  is a set of the user's, reported under its stem: `/x/probes.csv` is the set "probes".
  """
  names = list(schema.names(sets))
  if not names:
    raise ValueError("config.sets: no evaluation set named")
  for name in names:
    if user_files.is_path(name):
      sources.check_name(name)  # the file exists; its format is checked when read
    elif name not in sources.EVAL_SOURCES:
      raise ValueError(f"config.sets: unknown evaluation set {name!r}; known: "
                       f"{', '.join(sources.EVAL_SOURCES)} (or a file of prompts: .csv, "
                       ".jsonl, .json, .parquet)")
  set_names = [sources.source_name(n) for n in names]
  if len(set(set_names)) != len(set_names):
    raise ValueError(f"config.sets: a set is named twice in {', '.join(names)} (a file is "
                     "named by its stem)")
  return names


def check_limits(limits: Mapping[str, int]) -> None:
  """Refuses a per-set limit below -1 (see `load_prompts`), naming the set."""
  for name, limit in limits.items():
    if limit < -1:
      raise ValueError(f"config.limits.{name}={limit}: use -1 (max_prompts_per_set), 0 (all) "
                       "or a positive count")


def load_prompts(names: Sequence[str], data_dir: str | None, max_per_set: int = 0,
                 limits: Mapping[str, int] | None = None, sample_seed: int = -1,
                 columns: str = "") -> list[EvalPrompt]:
  """The prompts of each named set (or file: `columns` renames its columns), in set order.

  A set keeps at most `limits[name]` prompts (-1 or absent: `max_per_set`; 0: all): the first
  ones, or with `sample_seed` >= 0 a random subset drawn with that seed (and the set's name,
  so sets draw independently), kept in set order. The draw does not depend on the model, so
  every run of a sweep answers the same prompts.
  """
  out = []
  for spec in names:
    prompts = sources.load(spec, data_dir, columns=columns, expect=EvalPrompt)
    name = sources.source_name(spec)
    limit = (limits or {}).get(name, -1)
    limit = max_per_set if limit < 0 else limit
    if 0 < limit < len(prompts):
      if sample_seed >= 0:
        rng = np.random.default_rng([sample_seed, zlib.crc32(name.encode())])
        prompts = [prompts[i] for i in sorted(rng.choice(len(prompts), limit, replace=False))]
      else:
        prompts = prompts[:limit]
    out += prompts
  return out
