"""Checks a loaded parameter tree against the tree a config expects, with readable errors."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
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


@jax.jit
def _finite_leaves(params: Any) -> Any:
  return jax.tree.map(lambda x: jnp.isfinite(x).all(), params)


def check_finite(params: Any, source: str = "checkpoint") -> None:
  """Raises ValueError naming `source` and the first leaf holding NaN or inf: a damaged or
  diverged checkpoint otherwise trains (or answers) on garbage without a word. One jitted
  reduction per leaf, read back once. Works on sharded arrays spread over several processes
  (each reads its own copy of the replicated answers)."""
  local = lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x
  finite = _flatten(jax.device_get(jax.tree.map(local, _finite_leaves(params))))
  bad = [name for name, ok in finite.items() if not ok]
  if bad:
    more = f" (and {len(bad) - 1} more of {len(finite)} leaves)" if len(bad) > 1 else ""
    raise ValueError(f"{source}: parameter {bad[0]} holds NaN or inf{more}; the checkpoint "
                     "is damaged or comes from a diverged run")
