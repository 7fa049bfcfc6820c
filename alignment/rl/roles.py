"""The four parties of RLHF with PPO, each a small named object.

  Policy     the actor: the decoder that generates and is trained.
  Reference  the frozen starting policy; KL to it keeps the actor near what it was.
  ValueModel the critic: a decoder with a scalar head, estimating the return of a prefix.
(Rewards, functions of finished rollouts, are in `alignment.rl.rewards`.)

Memory-lean by default: with LoRA all three decoders share one frozen base. The policy is the
base plus its adapters, the reference is that same base with adapters off (no copy), and the
critic is the base plus its own adapters and a head. Without LoRA the policy trains the whole
decoder, the critic gets its own full copy, and the reference is a separate frozen copy.

Trainable parameters: {"base", "lora", "value": {"lora" | "backbone", "head": {"w", "b"}}}.
Rollout batches hold `tokens`, `input_mask`, `positions` [B, P + R] (prompt left-padded into
the first P columns, response from column P, right-padded) and `response_mask` [B, R].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from alignment import lora as lora_lib
from alignment import model
from alignment.model import layers
from alignment.model.config import ModelConfig

Array = jax.Array
Params = Any


def _response_hidden(cfg: ModelConfig, decoder_params: Params, batch: dict[str, Array]) -> Array:
  """Final hidden states at the positions that predict the response tokens: [B, R, D]."""
  response_len = batch["response_mask"].shape[1]
  prompt_len = batch["tokens"].shape[1] - response_len
  mask = model.causal_mask(batch["input_mask"].astype(bool))
  hidden, _ = model.forward(cfg, decoder_params, batch["tokens"], batch["positions"], mask,
                            return_hidden=True)
  return hidden[:, prompt_len - 1:prompt_len - 1 + response_len]


def response_logits(cfg: ModelConfig, decoder_params: Params, batch: dict[str, Array]) -> Array:
  """float32 logits [B, R, V] over each response token; the prompt's logits are never built
  (with a 262k vocabulary they would dominate memory)."""
  hidden = _response_hidden(cfg, decoder_params, batch)
  embedder = layers.Embedder(cfg.vocab_size, cfg.embed_dim, cfg.dtype, cfg.param_dtype)
  logits = embedder.apply({"params": decoder_params["embedder"]}, hidden, method="decode")
  return layers.soft_cap(logits.astype(jnp.float32), cfg.final_logit_soft_cap)


def response_tokens(batch: dict[str, Array]) -> Array:
  return batch["tokens"][:, batch["tokens"].shape[1] - batch["response_mask"].shape[1]:]


def token_logprobs(logits: Array, targets: Array) -> Array:
  """log p(target) [B, R] under the raw (untempered) distribution."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_entropy(logits: Array) -> Array:
  """Entropy of each next-token distribution [B, R], in nats."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


@dataclasses.dataclass(frozen=True)
class Policy:
  """The actor: decoder = base (+ its LoRA adapters)."""

  config: ModelConfig
  lora: lora_lib.LoraConfig | None

  def decoder(self, params: Params, dropout_rng: Array | None = None) -> Params:
    return lora_lib.decoder_params(params, self.lora, dropout_rng)

  def logits(self, params: Params, batch: dict[str, Array],
             dropout_rng: Array | None = None) -> Array:
    return response_logits(self.config, self.decoder(params, dropout_rng), batch)


@dataclasses.dataclass(frozen=True)
class Reference:
  """The frozen initial policy. With LoRA its parameters are the policy's own base (adapters
  off, nothing copied); without LoRA they are a copy taken before training."""

  config: ModelConfig
  shares_base: bool

  def decoder(self, params: Params, reference_params: Params | None) -> Params:
    if self.shares_base:
      return jax.lax.stop_gradient(params["base"])
    if reference_params is None:
      raise ValueError("a reference without LoRA needs its own frozen parameters")
    return jax.lax.stop_gradient(reference_params)

  def logprobs(self, params: Params, reference_params: Params | None,
               batch: dict[str, Array]) -> Array:
    logits = response_logits(self.config, self.decoder(params, reference_params), batch)
    return token_logprobs(logits, response_tokens(batch))


@dataclasses.dataclass(frozen=True)
class ValueModel:
  """The critic: V(prefix) read at the positions that predict each response token."""

  config: ModelConfig
  lora: lora_lib.LoraConfig | None

  def init(self, base: Params, rng: Array) -> Params:
    """Its parameters (under "value"): adapters (or a full copy of the base) and a zero head."""
    head = model.init_scalar_head_params(self.config, rng)
    value = {"head": {"w": head["w"], "b": head["b"]}}
    if self.lora is None:
      value["backbone"] = jax.tree.map(jnp.copy, base)
    else:
      value["lora"] = lora_lib.init_adapters(self.config, self.lora, jax.random.fold_in(rng, 1))
    return value

  def logical_axes(self) -> Params:
    head = {"w": jax.sharding.PartitionSpec("embed"), "b": jax.sharding.PartitionSpec()}
    if self.lora is None:
      return {"head": head, "backbone": model.param_logical_axes(self.config)}
    return {"head": head, "lora": lora_lib.adapter_logical_axes(self.config, self.lora)}

  def head_params(self, params: Params, dropout_rng: Array | None = None) -> Params:
    value = params["value"]
    if self.lora is None:
      backbone = value["backbone"]
    else:
      backbone = lora_lib.decoder_params({"base": params["base"], "lora": value["lora"]},
                                         self.lora, dropout_rng)
    return {"backbone": backbone, "w": value["head"]["w"], "b": value["head"]["b"]}

  def values(self, params: Params, batch: dict[str, Array],
             dropout_rng: Array | None = None) -> Array:
    """[B, R] float32 value estimates."""
    p = self.head_params(params, dropout_rng)
    hidden = _response_hidden(self.config, p["backbone"], batch)
    return (jnp.einsum("brd,d->br", hidden.astype(jnp.float32), p["w"].astype(jnp.float32))
            + p["b"].astype(jnp.float32))
