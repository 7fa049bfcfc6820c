"""The pairwise ranking loss of reward models, with Llama 2's margin and reward centering.

  loss = mean(-log sigmoid(r_c - r_r - m)) + centering * mean((r_c + r_r)^2)

m is each pair's preference strength times `margin_scale` (Touvron et al., 2023, eq. 2; pairs
without a strength have m = 0, the plain Bradley-Terry loss of Ouyang et al., 2022). The
centering term (Eisenstein et al., 2023) pins the otherwise free offset of the rewards near
0, so scores from different runs or models (safety vs helpfulness) share a scale.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from alignment import lora as lora_lib
from alignment.model.config import ModelConfig
from alignment.reward import model as reward_model

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RankingLossConfig:
  margin_scale: float = 1.0  # multiplies each pair's preference strength; 0 ignores it
  centering: float = 0.0  # coefficient of the (r_c + r_r)^2 penalty; 0 disables it

  def __post_init__(self):
    if self.centering < 0:
      raise ValueError(f"loss.centering={self.centering} must be >= 0")


def ranking_loss(r_chosen: Array, r_rejected: Array, margin: Array | None = None,
                 centering: float = 0.0) -> tuple[Array, dict[str, Array]]:
  """Mean ranking loss over pairs, and metrics (accuracy counts ties as half right)."""
  r_chosen = r_chosen.astype(jnp.float32)
  r_rejected = r_rejected.astype(jnp.float32)
  diff = r_chosen - r_rejected
  shifted = diff if margin is None else diff - margin.astype(jnp.float32)
  ranking = jnp.mean(-jax.nn.log_sigmoid(shifted))
  center = jnp.mean(jnp.square(r_chosen + r_rejected))
  loss = ranking + centering * center
  accuracy = jnp.mean(jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0)))
  return loss, {"ranking_loss": ranking, "centering_penalty": center, "accuracy": accuracy,
                "reward_chosen": jnp.mean(r_chosen), "reward_rejected": jnp.mean(r_rejected),
                "reward_gap": jnp.mean(diff)}


def make_loss_fn(config: ModelConfig, lora: lora_lib.LoraConfig | None,
                 loss: RankingLossConfig) -> Callable[..., tuple[Array, dict[str, Array]]]:
  """`loss_fn(params, batch, rng)` over {"base", "lora", "head"} params and pair batches."""
  def loss_fn(params: Any, batch: dict[str, Any], rng: Array):
    dropout_rng = rng if lora is not None and lora.dropout > 0 else None
    head_params = reward_model.scalar_head_params(params, lora, dropout_rng)
    r_chosen, r_rejected = reward_model.pair_rewards(config, head_params, batch)
    margin = batch["margin"] * loss.margin_scale if loss.margin_scale else None
    return ranking_loss(r_chosen, r_rejected, margin, loss.centering)

  return loss_fn
