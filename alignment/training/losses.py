"""Masked next-token cross-entropy, the loss of language-model pre-training and SFT."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from alignment import model

Array = jax.Array


def next_token_cross_entropy(logits: Array, targets: Array,
                             weights: Array | None = None) -> tuple[Array, Array]:
  """Weighted mean cross-entropy of `targets` [B, T] under `logits` [B, T, V].

  `weights` (the loss mask, default all ones) selects which positions count. Returns the mean
  over weighted positions (0 when there are none) and their count, so that callers can
  combine micro-batches or hosts by token count.
  """
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree on [B, T]")
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  weights = jnp.ones_like(losses) if weights is None else weights.astype(jnp.float32)
  count = jnp.sum(weights)
  return jnp.sum(losses * weights) / jnp.maximum(count, 1.0), count


def language_model_loss(config: model.ModelConfig) -> Callable[..., tuple[Array, dict]]:
  """A `loss_fn(params, batch, rng) -> (loss, aux)` for causal language modelling.

  `batch["tokens"]` [B, L]: position i predicts token i+1. Optional fields, all [B, L]:
  `loss_mask` (token i counts as a target where it is nonzero), `input_mask` (False on
  padding), and for packed rows `segment_ids` (1, 2, ... per sequence, 0 on padding) with
  `positions`; no token is predicted across a segment boundary.
  """
  def loss_fn(params: Any, batch: dict[str, Array], rng: Array) -> tuple[Array, dict]:
    del rng  # Deterministic model: no dropout.
    tokens = batch["tokens"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if "segment_ids" in batch:
      segments = batch["segment_ids"]
      mask = model.segment_causal_mask(segments[:, :-1])
      positions = batch["positions"][:, :-1]
      valid = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] != 0)
    else:
      input_mask = batch.get("input_mask", jnp.ones(tokens.shape, bool)).astype(bool)
      mask = model.causal_mask(input_mask[:, :-1])
      positions = model.positions_from_mask(input_mask[:, :-1])
      valid = input_mask[:, 1:] & input_mask[:, :-1]
    weights = valid.astype(jnp.float32)
    if "loss_mask" in batch:
      weights = weights * batch["loss_mask"][:, 1:].astype(jnp.float32)
    logits, _ = model.forward(config, params, inputs, positions, mask)
    loss, count = next_token_cross_entropy(logits, targets, weights)
    return loss, {"num_target_tokens": count}

  return loss_fn
