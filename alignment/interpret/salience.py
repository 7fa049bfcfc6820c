"""Token salience for prompt debugging: which prompt tokens drive a given response.

In the manner of LIT's LM salience, we score a (prompt, target) pair by the log-likelihood the
model gives the target after the prompt, and differentiate it with respect to the input
embeddings x_t (the scaled embedding rows the decoder's first block receives):

  gradient L2 norm:     ||d logp / d x_t||         how sensitive the target is to token t
  gradient x input:     (d logp / d x_t) . x_t     first-order effect of removing token t's
                                                   embedding; signed (+: supports the target)

How the decoder is run from embeddings without forking the model: `nn.intercept_methods`
wraps `Embedder.encode` during `forward`, adding a zero `delta` [B, T, D] to its output.
d logp / d delta at delta = 0 equals d logp / d x, the interceptor also hands back x itself, and
`Transformer` stays the one model definition (the tied `decode` projection is untouched, so
the gradient is not mixed with the output layer's use of the same table).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alignment.model import layers
from alignment.model.config import ModelConfig
from alignment.model.masks import causal_mask, positions_from_mask
from alignment.model.transformer import forward

Array = jax.Array
Params = Any


def forward_with_embedding_delta(cfg: ModelConfig, params: Params, tokens: Array,
                                 input_mask: Array, delta: Array) -> tuple[Array, Array]:
  """Logits [B, T, V] of the decoder run on embed(tokens) + delta, and embed(tokens) [B, T, D].

  `input_mask` [B, T] is False on (right) padding. Padding never influences real tokens.
  """
  captured = []

  def add_delta(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "encode" and isinstance(context.module, layers.Embedder):
      captured.append(out)
      return out + delta.astype(out.dtype)
    return out

  positions = positions_from_mask(input_mask)
  with nn.intercept_methods(add_delta):
    logits, _ = forward(cfg, params, tokens, positions, causal_mask(input_mask))
  if len(captured) != 1:
    raise RuntimeError(f"expected one Embedder.encode call in forward, saw {len(captured)}")
  return logits, captured[0]


def target_log_likelihood(cfg: ModelConfig, params: Params, tokens: Array, target_mask: Array,
                          input_mask: Array, delta: Array) -> tuple[Array, Array]:
  """Sum of log p(token_t | tokens_<t) over positions where `target_mask` [B, T] is True
  (per row, [B]), and the input embeddings. Position 0 cannot be a target (nothing predicts it).
  """
  logits, embeddings = forward_with_embedding_delta(cfg, params, tokens, input_mask, delta)
  logprobs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(target_mask[:, 1:], picked, 0.0), axis=-1), embeddings


@functools.partial(jax.jit, static_argnums=0)
def salience_maps(cfg: ModelConfig, params: Params, tokens: Array, target_mask: Array,
                  input_mask: Array) -> dict[str, Array]:
  """Per-token salience of every input position for the target's log-likelihood.

  Args: tokens, target_mask, input_mask: [B, T]. Rows are independent (summing their
  log-likelihoods before differentiating keeps each row's gradient its own).
  Returns {"log_likelihood": [B], "grad": [B, T, D], "embeddings": [B, T, D],
           "grad_l2": [B, T], "grad_dot_input": [B, T]} (float32; 0 on padding).
  """
  delta = jnp.zeros((*tokens.shape, cfg.embed_dim), jnp.float32)

  def total(d):
    ll, emb = target_log_likelihood(cfg, params, tokens, target_mask, input_mask, d)
    return jnp.sum(ll), (ll, emb)

  grad, (ll, emb) = jax.grad(total, has_aux=True)(delta)
  grad = jnp.where(input_mask[..., None], grad, 0.0)
  emb = emb.astype(jnp.float32)
  return {"log_likelihood": ll, "grad": grad, "embeddings": emb,
          "grad_l2": jnp.linalg.norm(grad, axis=-1),
          "grad_dot_input": jnp.sum(grad * emb, axis=-1)}


@dataclasses.dataclass(frozen=True)
class SalienceResult:
  """Salience of one (prompt, target) pair, ready to render.

  tokens/pieces cover <bos>, the prompt, then the target; `prompt_length` counts <bos> and the
  prompt. Scores are per token (numpy float32); target tokens get scores too (earlier target
  tokens condition later ones) but are usually shown unshaded.
  """

  pieces: list[str]
  tokens: np.ndarray
  prompt_length: int
  grad_l2: np.ndarray
  grad_dot_input: np.ndarray
  log_likelihood: float
  prompt: str = ""
  target: str = ""

  @property
  def target_tokens(self) -> int:
    return len(self.pieces) - self.prompt_length

  def top_prompt_tokens(self, method: str = "grad_l2", k: int = 5) -> list[tuple[int, str, float]]:
    """The k prompt positions with the largest |score| (position, piece, score), <bos> left out."""
    scores = np.asarray(getattr(self, method))[:self.prompt_length]
    order = [int(i) for i in np.argsort(-np.abs(scores)) if i > 0][:k]
    return [(i, self.pieces[i], float(scores[i])) for i in order]


def _bucket(n: int, multiple: int = 32) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def prompt_salience(cfg: ModelConfig, params: Params, tokenizer, prompt: str, target: str,
                    ) -> SalienceResult:
  """Salience of `prompt` (already formatted: any template applied) for `target`.

  The sequence is <bos> + encode(prompt) + encode(target), right-padded to a multiple of 32 so
  prompts of similar length share one compiled program.
  """
  prompt_ids = tokenizer.encode(prompt, add_bos=True)
  target_ids = tokenizer.encode(target)
  if not target_ids:
    raise ValueError("salience needs a non-empty target (the response to explain)")
  ids = prompt_ids + target_ids
  length = _bucket(len(ids))
  tokens = np.zeros((1, length), np.int32)
  tokens[0, :len(ids)] = ids
  input_mask = np.zeros((1, length), bool)
  input_mask[0, :len(ids)] = True
  target_mask = np.zeros((1, length), bool)
  target_mask[0, len(prompt_ids):len(ids)] = True
  maps = jax.device_get(salience_maps(cfg, params, jnp.asarray(tokens), jnp.asarray(target_mask),
                                      jnp.asarray(input_mask)))
  n = len(ids)
  return SalienceResult(
      pieces=[tokenizer.piece(i) for i in ids], tokens=np.asarray(ids, np.int32),
      prompt_length=len(prompt_ids), grad_l2=np.asarray(maps["grad_l2"][0, :n]),
      grad_dot_input=np.asarray(maps["grad_dot_input"][0, :n]),
      log_likelihood=float(maps["log_likelihood"][0]), prompt=prompt, target=target)


def piece_text(piece: str) -> str:
  """A SentencePiece piece as display text: '▁' is a space, byte pieces <0x0A> their char."""
  if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
    try:
      return bytes([int(piece[3:5], 16)]).decode("utf-8", errors="replace")
    except ValueError:
      pass
  return piece.replace("\u2581", " ")


def normalized(scores: Sequence[float] | np.ndarray) -> np.ndarray:
  """Scores divided by their largest magnitude (zeros stay zeros): shading in [-1, 1]."""
  scores = np.asarray(scores, np.float64)
  top = np.max(np.abs(scores)) if scores.size else 0.0
  return scores / top if top > 0 else np.zeros_like(scores)
