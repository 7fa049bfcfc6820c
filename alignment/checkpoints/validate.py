"""Checks a loaded parameter tree against the tree a config expects, with readable errors."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from alignment.model.config import ModelConfig
from alignment.model.transformer import param_shapes


def _flatten(tree: Any) -> dict[str, Any]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = leaf
  return flat


def validate_params(params: Any, config: ModelConfig, source: str = "checkpoint") -> None:
  """Raises ValueError naming every missing, unexpected or mis-shaped parameter."""
  expected = _flatten(param_shapes(config))
  found = _flatten(params)
  problems = []
  for name in sorted(expected.keys() - found.keys()):
    problems.append(f"missing parameter {name} (expected shape {tuple(expected[name].shape)})")
  for name in sorted(found.keys() - expected.keys()):
    problems.append(f"unexpected parameter {name} (shape {tuple(np.shape(found[name]))})")
  for name in sorted(expected.keys() & found.keys()):
    want, got = tuple(expected[name].shape), tuple(np.shape(found[name]))
    if want != got:
      problems.append(f"parameter {name}: expected shape {want}, found {got}")
  if problems:
    raise ValueError(f"{source} does not match the model config:\n  " + "\n  ".join(problems))
