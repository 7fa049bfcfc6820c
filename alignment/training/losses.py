"""Masked next-token cross-entropy, the loss of language-model pre-training and SFT.

With a large vocabulary the [B, T, V] logits dominate activation memory (Gemma 3: V = 262144,
so 1 MiB of float32 logits per token, plus as much again for their gradient). The chunked
form computes the same loss from the final hidden states a few positions at a time and
recomputes each chunk's logits in the backward pass, so only [B, chunk, V] is ever live.

Positions without loss (prompt tokens under a response-only mask, padding) need no logits:
`loss_positions` gathers the weighted positions' hidden states, up to a static count, before
the output projection (`gathered_next_token_cross_entropy`).

`sft_loss_fn` / `sft_eval_fn` wrap it for trainable trees {"base", "lora"} (SFT, rejection
sampling and distillation rounds all train with it).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from alignment import lora as lora_lib
from alignment import model
from alignment.model.layers import soft_cap
from alignment.training import distributed

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


def chunked_next_token_cross_entropy(hidden: Array, embedding: Array, targets: Array,
                                     weights: Array | None = None,
                                     final_logit_soft_cap: float | None = None,
                                     chunk_size: int = 128) -> tuple[Array, Array]:
  """`next_token_cross_entropy` of the tied-output logits, never holding them all at once.

  `hidden` [B, T, D] are the final-normed hidden states (`forward(..., return_hidden=True)`),
  `embedding` [V, D] the tied output matrix, already in the compute dtype; logits are
  `soft_cap(float32(hidden @ embedding.T))` exactly as the decoder computes them. The sequence
  is cut into chunks of `chunk_size` positions (the last one padded with zero weight); a
  `scan` over `jax.checkpoint`ed chunks keeps [B, chunk_size, V] logits alive at a time, in
  the forward and in the backward pass.
  """
  if hidden.shape[:-1] != targets.shape:
    raise ValueError(f"hidden {hidden.shape} and targets {targets.shape} disagree on [B, T]")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  batch, length = targets.shape
  weights = (jnp.ones(targets.shape, jnp.float32) if weights is None
             else weights.astype(jnp.float32))
  num_chunks = -(-length // chunk_size)
  pad = num_chunks * chunk_size - length
  chunked = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)).reshape(
      (batch, num_chunks, chunk_size) + x.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint  # save nothing: the backward pass recomputes this chunk's logits
  def chunk_loss(h: Array, t: Array, w: Array) -> Array:
    logits = jnp.einsum("btd,vd->btv", h, embedding).astype(jnp.float32)
    logits = soft_cap(logits, final_logit_soft_cap)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, t) * w)

  def body(total: Array, chunk: tuple[Array, Array, Array]) -> tuple[Array, None]:
    return total + chunk_loss(*chunk), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                          (chunked(hidden), chunked(targets), chunked(weights)))
  count = jnp.sum(weights)
  return total / jnp.maximum(count, 1.0), count


def gathered_next_token_cross_entropy(hidden: Array, embedding: Array, targets: Array,
                                      weights: Array, max_positions: int,
                                      final_logit_soft_cap: float | None = None,
                                      chunk_size: int | None = None
                                      ) -> tuple[Array, Array, Array]:
  """The tied-output cross-entropy computed only at positions whose weight is non-zero.

  The first `max_positions` weighted positions of the flattened [B * T] batch are gathered
  (a static shape; unused rows get weight 0), so the [*, V] projection costs max_positions
  rows instead of B * T. A batch with more weighted positions cannot be computed in that
  shape: its loss is NaN (which stops the training loop) and `dropped` counts the excess.
  A fallback branch (`lax.cond`) would keep both programs' buffers and FLOPs in the compiled
  step, undoing the saving. Returns (loss, count, dropped). `chunk_size`: project the
  gathered rows `chunked_next_token_cross_entropy`-wise.
  """
  if max_positions < 1:
    raise ValueError(f"max_positions must be >= 1, got {max_positions}")
  if hidden.shape[:-1] != targets.shape:
    raise ValueError(f"hidden {hidden.shape} and targets {targets.shape} disagree on [B, T]")
  flat_weights = weights.astype(jnp.float32).reshape(-1)
  max_positions = min(max_positions, flat_weights.shape[0])
  nonzero = jnp.sum(flat_weights != 0)
  (index,) = jnp.nonzero(flat_weights, size=max_positions, fill_value=0)
  used = jnp.arange(max_positions) < nonzero
  pick = lambda x: x.reshape((-1,) + x.shape[2:])[index][None]
  h, t = pick(hidden), pick(targets)
  w = jnp.where(used, flat_weights[index], 0.0)[None]
  if chunk_size:
    loss, count = chunked_next_token_cross_entropy(h, embedding, t, w, final_logit_soft_cap,
                                                   chunk_size)
  else:
    logits = soft_cap(jnp.einsum("btd,vd->btv", h, embedding).astype(jnp.float32),
                      final_logit_soft_cap)
    loss, count = next_token_cross_entropy(logits, t, w)
  dropped = jnp.maximum(nonzero - max_positions, 0)
  return jnp.where(dropped > 0, jnp.nan, loss), count, dropped


def language_model_loss(config: model.ModelConfig, logits_chunk: int | None = None,
                        loss_positions: int | None = None
                        ) -> Callable[..., tuple[Array, dict]]:
  """A `loss_fn(params, batch, rng, lora=None) -> (loss, aux)` for causal language modelling.

  `lora`: optional low-rank paths (`alignment.lora.adapter_paths`), for LoRA unmerged.
  `logits_chunk`: compute the loss `chunked_next_token_cross_entropy`-wise, this many
  positions at a time (same loss and gradients, far less activation memory); None computes
  the full [B, T, V] logits. `loss_positions`: project only the weighted positions, up to
  this many per batch (`gathered_next_token_cross_entropy`: the same loss; a batch with
  more gets a NaN loss, and aux["loss_positions_dropped"] says by how many).

  `batch["tokens"]` [B, L]: position i predicts token i+1. Optional fields, all [B, L]:
  `loss_mask` (token i counts as a target where it is nonzero), `input_mask` (False on
  padding), and for packed rows `segment_ids` (1, 2, ... per sequence, 0 on padding) with
  `positions`; no token is predicted across a segment boundary.
  """
  def loss_fn(params: Any, batch: dict[str, Array], rng: Array,
              lora: Any = None) -> tuple[Array, dict]:
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
    if loss_positions:
      hidden, _ = model.forward(config, params, inputs, positions, mask, return_hidden=True,
                                lora=lora)
      embedding = params["embedder"]["input_embedding"].astype(config.dtype)
      loss, count, dropped = gathered_next_token_cross_entropy(
          hidden, embedding, targets, weights, loss_positions, config.final_logit_soft_cap,
          logits_chunk)
      return loss, {"num_target_tokens": count,
                    "loss_positions_dropped": dropped.astype(jnp.float32)}
    if logits_chunk is None:
      logits, _ = model.forward(config, params, inputs, positions, mask, lora=lora)
      loss, count = next_token_cross_entropy(logits, targets, weights)
    else:
      hidden, _ = model.forward(config, params, inputs, positions, mask, return_hidden=True,
                                lora=lora)
      embedding = params["embedder"]["input_embedding"].astype(config.dtype)
      loss, count = chunked_next_token_cross_entropy(
          hidden, embedding, targets, weights, config.final_logit_soft_cap, logits_chunk)
    return loss, {"num_target_tokens": count}

  return loss_fn


def sft_loss_fn(cfg: model.ModelConfig, lcfg: lora_lib.LoraConfig | None,
                unmerged: bool = False, logits_chunk: int = 0,
                loss_positions: int = 0) -> Callable:
  """The SFT training loss over {"base", "lora"} params.

  `unmerged`: LoRA as low-rank paths beside the frozen projections (x W + s (x A) B), so the
  base gets no weight gradient; otherwise the adapters are merged into the weights first
  (fewer, larger matmuls: faster on a CPU, see docs/PERFORMANCE.md). `logits_chunk` > 0
  computes the cross-entropy that many positions at a time, never the full [B, T, V] logits.
  `loss_positions` > 0 computes logits only at positions with loss, up to that many a batch.
  """
  if logits_chunk < 0:
    raise ValueError(f"train.logits_chunk={logits_chunk} must be >= 0 (0 = the full logits)")
  if loss_positions < 0:
    raise ValueError(f"train.loss_positions={loss_positions} must be >= 0 (0 = every "
                     "position)")
  lm_loss = language_model_loss(cfg, logits_chunk or None, loss_positions or None)

  def loss_fn(params, batch, rng):
    if unmerged and lcfg is not None:
      paths = lora_lib.adapter_paths(params["lora"], lcfg, rng)
      return lm_loss(jax.lax.stop_gradient(params["base"]), batch, rng, lora=paths)
    return lm_loss(lora_lib.decoder_params(params, lcfg, rng), batch, rng)

  return loss_fn


def sft_eval_fn(cfg: model.ModelConfig, lcfg: lora_lib.LoraConfig | None) -> Callable:
  """Jitted (params, batch) -> (summed token loss, target tokens), for held-out loss."""
  lm_loss = language_model_loss(cfg)

  @jax.jit
  def eval_fn(params, batch):
    loss, aux = lm_loss(lora_lib.decoder_params(params, lcfg), batch, jax.random.key(0))
    return loss * aux["num_target_tokens"], aux["num_target_tokens"]

  return eval_fn


def held_out_loss(eval_fn: Callable, params: Any, batches, num_batches: int, mesh) -> float:
  """Mean token loss over up to `num_batches` batches (weighted by target tokens)."""
  total, count = 0.0, 0.0
  for _ in range(num_batches):
    try:
      batch = next(batches)
    except StopIteration:
      break
    loss_sum, n = eval_fn(params, distributed.global_batch(batch, mesh))
    total += float(loss_sum)
    count += float(n)
  return total / max(count, 1.0)
