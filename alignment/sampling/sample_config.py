"""How a job's sampling keys become `SamplingParams`, checked with errors naming the key.

Every job that samples (generate, evaluations, rejection sampling, distillation, PPO
rollouts) has temperature / top_k / top_p beside max_new_tokens and batch_size in one
section; one reader keeps their checks and messages the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alignment.sampling.sampler import SamplingParams
from alignment.schema import from_section


def sampling_params(section: Mapping[str, Any]) -> SamplingParams:
  """SamplingParams from a section's temperature/top_k/top_p, after checking those and
  max_new_tokens / batch_size (where the section has them)."""
  try:
    sampling = from_section(SamplingParams, section)
  except ValueError as e:
    raise ValueError(f"config: {e}") from None
  for field in ("max_new_tokens", "batch_size"):
    if field in section and section[field] < 1:
      raise ValueError(f"config.{field}: must be >= 1 (got {section[field]})")
  return sampling
