"""DPO's validation: preference accuracy and the loss terms over every held-out pair.

Why beside the loss: the figures are `dpo.pair_terms` averaged over the validation pairs with
the frozen reference, the measure of whether the policy's implicit reward ranks the chosen
reply higher on pairs it did not train on. Batches have a fixed size (one compiled program);
the last is filled by repeats that a weight of 0 leaves out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignment import lora as lora_lib
from alignment.data import batching
from alignment.model.config import ModelConfig
from alignment.rl import dpo
from alignment.training import distributed

log = logging.getLogger(__name__)


def make_eval_fn(cfg: ModelConfig, lcfg: lora_lib.LoraConfig | None, dpo_cfg: dpo.DPOConfig):
  """Jitted (params, batch) -> sums over the batch's real pairs (batch["weight"] = 1)."""
  @jax.jit
  def eval_fn(params, batch):
    policy, reference = dpo.policy_and_reference(params, lcfg)
    pc, pr = dpo.pair_logprobs(cfg, policy, batch)
    rc, rr = dpo.pair_logprobs(cfg, reference, batch)
    terms = dpo.pair_terms(pc, pr, rc, rr, dpo_cfg)
    w = batch["weight"]
    return {k: jnp.sum(v * w) for k, v in terms.items()} | {"count": jnp.sum(w)}

  return eval_fn


def validation_metrics(eval_fn, params, pairs: list, batch_size: int, buckets, pad_id: int,
                       mesh) -> dict[str, float]:
  """Means over every validation pair, in fixed-size batches (the last filled by repeats)."""
  totals: dict[str, float] = {}
  rows = batching.host_rows(batch_size, jax.process_index(), jax.process_count())
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    padded = chunk + [chunk[0]] * (batch_size - len(chunk))
    batch = batching.pad_pair_batch(padded, buckets, pad_id, rows=rows)
    batch["weight"] = (np.arange(batch_size) < len(chunk)).astype(np.float32)[rows]
    sums = jax.device_get(eval_fn(params, distributed.global_batch(batch, mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = max(totals.pop("count", 0.0), 1.0)
  return {f"val_{k}": v / count for k, v in totals.items()}


class Validation:
  """The trainer's `evaluate` callback: (step, state) -> {"step", "val_*"}, each record kept
  in `history` and logged on the primary process."""

  def __init__(self, cfg: ModelConfig, lcfg: lora_lib.LoraConfig | None,
               dpo_cfg: dpo.DPOConfig, pairs: Sequence, batch_size: int, buckets, pad_id: int,
               mesh):
    self._eval_fn = make_eval_fn(cfg, lcfg, dpo_cfg)
    self._args = (list(pairs), batch_size, buckets, pad_id, mesh)
    self.history: list[dict[str, Any]] = []

  def __call__(self, step: int, state) -> dict[str, Any]:
    record = {"step": step, **validation_metrics(self._eval_fn, state.params, *self._args)}
    self.history.append(record)
    if distributed.is_primary():
      log.info("validation at step %d: %s", step, json.dumps(record))
    return record
