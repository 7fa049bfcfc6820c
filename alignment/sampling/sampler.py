"""Batched autoregressive sampling with a KV cache, compiled as one program per shape bucket.

Prompts are left-padded so every row's last prompt token sits in the same cache slot; one
forward pass fills the cache (prefill), then a `jax.lax.while_loop` feeds one token per step
until every row has stopped or the token budget is spent. Prompt length, batch size and token
budget are rounded up to buckets (`bucket_size`), so a new prompt length usually reuses an
already compiled program; the token budget itself is a traced loop bound.

Slots and RoPE positions advance together within a row (its real tokens are contiguous), so
the model's sliding-window band, measured in slots, is exact past the window. Local
(sliding-window) layers keep a ring of `sliding_window_size` cache entries (`ring_local`);
global layers keep every slot.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignment.data import batching
from alignment.model import layers
from alignment.model.config import ModelConfig
from alignment.model.masks import causal_mask, positions_from_mask
from alignment.model.transformer import forward, init_cache
from alignment.prompts.templates import PromptTemplate

Array = jax.Array
Params = Any

EOS_ID = 1
END_OF_TURN_ID = 106
DEFAULT_STOP_IDS = (EOS_ID, END_OF_TURN_ID)
PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is chosen from the logits.

  temperature 0 means greedy (argmax; top_k and top_p are then ignored). top_k=0 and top_p=1
  disable those filters. Temperature is applied first, then top-k, then top-p.
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0.0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """Generated continuations; positions at or past a row's length hold the pad id.

  tokens: [B, max_new_tokens] int32, including the stop token that ended a row.
  lengths: [B] int32, generated tokens per row (stop token included).
  logprobs: [B, max_new_tokens] float32 log-probabilities of the chosen tokens under the
    model's own distribution (log_softmax of the raw logits, before temperature/top-k/top-p,
    i.e. what a training forward pass recomputes); 0 on padding. None unless requested.
  text: decoded continuations without the stop token (filled by `Sampler`, else None).
  """

  tokens: Array
  lengths: Array
  logprobs: Array | None = None
  text: list[str] | None = None


# ----------------------------------------------------------------------------------------------
# Logit filters: small pure functions on [..., V] logits.


def _mask_below(logits: Array, threshold: Array) -> Array:
  return jnp.where(logits < threshold[..., None], -jnp.inf, logits)


def _top_p_threshold(sorted_logits: Array, top_p: Array) -> Array:
  """Smallest logit kept by nucleus filtering, from logits sorted in descending order."""
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_before < top_p  # a prefix of the sorted order; always holds the first token
  last = jnp.sum(keep, axis=-1) - 1
  return jnp.take_along_axis(sorted_logits, last[..., None], axis=-1)[..., 0]


def top_k_filter(logits: Array, k: int) -> Array:
  """Sets every logit below the k-th largest to -inf (ties with the k-th are kept)."""
  kth = jax.lax.top_k(logits, k)[0][..., -1]
  return _mask_below(logits, kth)


def top_p_filter(logits: Array, top_p: float | Array) -> Array:
  """Keeps the smallest set of most likely tokens whose probability mass reaches `top_p`.

  Tokens tied with the least likely kept token are kept too.
  """
  sorted_logits = -jnp.sort(-logits, axis=-1)
  return _mask_below(logits, _top_p_threshold(sorted_logits, jnp.asarray(top_p)))


def filter_logits(logits: Array, top_k: int, top_p: float | Array | None) -> Array:
  """top-k then top-p (None skips it); with top-k, top-p only sorts the k survivors."""
  if top_k:
    top_values = jax.lax.top_k(logits, top_k)[0]
    logits = _mask_below(logits, top_values[..., -1])
    if top_p is not None:
      logits = _mask_below(logits, _top_p_threshold(top_values, jnp.asarray(top_p)))
    return logits
  if top_p is not None:
    return top_p_filter(logits, top_p)
  return logits


def choose_tokens(logits: Array, rng: Array, *, greedy: bool, temperature: float | Array = 1.0,
                  top_k: int = 0, top_p: float | Array | None = None) -> Array:
  """Picks one token per row of [B, V] float32 logits: argmax, or a filtered sample.

  `greedy` and `top_k` shape the program (static); temperature and top-p may be traced.
  """
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = filter_logits(logits / temperature, top_k, top_p)
  return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# The compiled program.


def bucket_size(n: int, minimum: int, fine: bool = False) -> int:
  """Rounds n up to a power of two (or, if `fine`, also 1.5x one), at least `minimum`.

  Few distinct shapes (log-many) and bounded padding waste: < 2x, or < 1.5x with `fine`.
  """
  n = max(int(n), minimum)
  power = 1 << (n - 1).bit_length()
  return 3 * power // 4 if fine and 4 * n <= 3 * power else power


def _last_logits(cfg: ModelConfig, params: Params, hidden: Array) -> Array:
  """Logits of the final position only, through the model's own tied output layer."""
  embedder = layers.Embedder(cfg.vocab_size, cfg.embed_dim, cfg.dtype, cfg.param_dtype)
  logits = embedder.apply({"params": params["embedder"]}, hidden[:, -1:], method="decode")
  return layers.soft_cap(logits.astype(jnp.float32), cfg.final_logit_soft_cap)[:, 0]


def generate_padded(cfg: ModelConfig, params: Params, prompt_tokens: Array, prompt_mask: Array,
                    row_active: Array, rng: Array, max_new_tokens: Array, temperature: Array,
                    top_p: Array, stop_ids: Array, *, capacity: int, greedy: bool, top_k: int,
                    use_top_p: bool, pad_id: int, return_logprobs: bool,
                    ring_local: bool = True) -> tuple[Array, Array, Array | None]:
  """Traceable core: left-padded prompts [B, P] -> ([B, capacity] tokens, [B] lengths, logprobs).

  Every active row needs its last prompt token in the last column. Inactive rows (batch
  padding) start finished. Decoding stops once every row has hit one of `stop_ids` ([N] int,
  -1 entries are unused) or `max_new_tokens` (<= capacity) tokens exist. `ring_local`: local
  layers cache only their window (`init_cache(..., ring_local=True)`); same tokens.
  """
  batch, prompt_len = prompt_tokens.shape
  cache_len = prompt_len + capacity
  prompt_mask = prompt_mask.astype(bool)
  prompt_lengths = jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32)
  slots = jnp.arange(cache_len)
  prompt_slots = jnp.pad(prompt_mask, ((0, 0), (0, capacity)))

  def pick(logits, step):
    token = choose_tokens(logits, jax.random.fold_in(rng, step), greedy=greedy,
                          temperature=temperature, top_k=top_k,
                          top_p=top_p if use_top_p else None)
    if not return_logprobs:
      return token, None
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)
    return token, logprob[:, 0]

  def record(state, token, logprob, step):
    """Writes the token of generation step `step` for rows that were still running."""
    running = ~state["done"]
    state["last"] = token  # always a real id, so finished rows keep computing harmlessly
    token = jnp.where(running, token, pad_id)
    state["tokens"] = state["tokens"].at[:, step].set(token)
    if return_logprobs:
      state["logprobs"] = state["logprobs"].at[:, step].set(jnp.where(running, logprob, 0.0))
    state["lengths"] = state["lengths"] + running.astype(jnp.int32)
    state["done"] = state["done"] | (running & jnp.isin(token, stop_ids))
    state["step"] = step + 1
    return state

  # Prefill: the whole prompt in one call; only the last position's logits are needed.
  mask = jnp.pad(causal_mask(prompt_mask), ((0, 0), (0, 0), (0, capacity)))
  cache = init_cache(cfg, batch, cache_len, ring_local=ring_local)
  hidden, cache = forward(cfg, params, prompt_tokens, positions_from_mask(prompt_mask), mask,
                          cache, return_hidden=True)
  token, logprob = pick(_last_logits(cfg, params, hidden), 0)
  state = {
      "tokens": jnp.full((batch, capacity), pad_id, jnp.int32),
      "lengths": jnp.zeros((batch,), jnp.int32),
      "done": ~row_active.astype(bool),
      "cache": cache,
  }
  if return_logprobs:
    state["logprobs"] = jnp.zeros((batch, capacity), jnp.float32)
  state = record(state, token, logprob, 0)

  def keep_going(state):
    return (state["step"] < max_new_tokens) & ~jnp.all(state["done"])

  def decode_step(state):
    step = state["step"]
    slot = state["cache"]["index"]  # where the previous token's keys/values go
    visible = jnp.where(slots < prompt_len, prompt_slots, slots <= slot)
    positions = (prompt_lengths + step - 1)[:, None]
    logits, state["cache"] = forward(cfg, params, state["last"][:, None], positions,
                                     visible[:, None, :], state["cache"])
    token, logprob = pick(logits[:, 0], step)
    return record(state, token, logprob, step)

  state = jax.lax.while_loop(keep_going, decode_step, state)
  return state["tokens"], state["lengths"], state.get("logprobs")


_generate_jit = jax.jit(
    generate_padded, static_argnames=("cfg", "capacity", "greedy", "top_k", "use_top_p",
                                      "pad_id", "return_logprobs", "ring_local"))


def generate(cfg: ModelConfig, params: Params, prompt_tokens, prompt_mask, rng: Array,
             max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
             stop_ids: Sequence[int] = DEFAULT_STOP_IDS, pad_id: int = PAD_ID,
             return_logprobs: bool = False, ring_local: bool = True) -> SampleOutput:
  """Generates up to `max_new_tokens` tokens after each prompt.

  Args:
    prompt_tokens: [B, T] int ids; each row's real tokens are those where `prompt_mask` is
      True (left or right padding both work: rows are re-packed to the left-padded layout).
    prompt_mask: [B, T] bool.
    rng: PRNG key; ignored when sampling greedily.
    stop_ids: a row ends after producing any of these (the stop token is kept in `tokens`).
    pad_id: fills `tokens` after a row's end (-1 is allowed, to tell padding apart).
    ring_local: local layers keep a window-sized ring cache instead of every slot.
  """
  tokens = np.asarray(prompt_tokens)
  mask = np.asarray(prompt_mask).astype(bool)
  if tokens.ndim != 2 or tokens.shape != mask.shape:
    raise ValueError(f"prompt_tokens {tokens.shape} and prompt_mask {mask.shape} must both be "
                     "[batch, length] with the same shape")
  if tokens.shape[0] == 0:
    raise ValueError("empty batch: no prompts given")
  lengths = mask.sum(axis=1)
  if (lengths == 0).any():
    raise ValueError(f"prompt row(s) {np.flatnonzero(lengths == 0).tolist()} have no tokens; "
                     "every prompt needs at least one (e.g. <bos>)")
  real = tokens[mask]
  if ((real < 0) | (real >= cfg.vocab_size)).any():
    raise ValueError(f"prompt token ids must lie in [0, {cfg.vocab_size}); found "
                     f"{real.min()}..{real.max()}")
  if sampling.top_k > cfg.vocab_size:
    raise ValueError(f"top_k={sampling.top_k} exceeds the vocabulary size {cfg.vocab_size}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")

  batch = tokens.shape[0]
  padded_batch = bucket_size(batch, 1)
  padded_len = bucket_size(lengths.max(), 16, fine=True)  # prefill cost scales with it
  capacity = bucket_size(max_new_tokens, 16)
  packed = np.zeros((padded_batch, padded_len), np.int32)  # masked out; any valid id does
  packed_mask = np.zeros((padded_batch, padded_len), bool)
  for row in range(batch):
    n = lengths[row]
    packed[row, padded_len - n:] = tokens[row][mask[row]]
    packed_mask[row, padded_len - n:] = True
  stops = [int(i) for i in stop_ids]
  # Traced, padded to a bucket of -1 (matches no token): other stop ids reuse the program.
  stop_array = np.full(bucket_size(len(stops), 8), -1, np.int32)
  stop_array[:len(stops)] = stops
  active = np.arange(padded_batch) < batch
  if not active.all():  # batch-padding rows: one dummy token so no row is empty
    packed_mask[~active, -1] = True

  out_tokens, out_lengths, out_logprobs = _generate_jit(
      cfg, params, packed, packed_mask, active, rng, jnp.int32(max_new_tokens),
      jnp.float32(sampling.temperature or 1.0), jnp.float32(sampling.top_p), stop_array,
      capacity=capacity, greedy=sampling.greedy, top_k=sampling.top_k,
      use_top_p=sampling.top_p < 1.0, pad_id=int(pad_id),
      return_logprobs=return_logprobs, ring_local=ring_local)
  return SampleOutput(
      tokens=out_tokens[:batch, :max_new_tokens], lengths=out_lengths[:batch],
      logprobs=None if out_logprobs is None else out_logprobs[:batch, :max_new_tokens])


# ----------------------------------------------------------------------------------------------
# Text in, text out.


class Sampler:
  """Holds a model and tokenizer; formats prompts, runs `generate`, decodes the results."""

  def __init__(self, cfg: ModelConfig, params: Params, tokenizer,
               template: PromptTemplate | None = None,
               stop_ids: Sequence[int] | None = None):
    self.cfg = cfg
    self.params = params
    self.tokenizer = tokenizer
    self.template = template
    if stop_ids is None:
      stop_ids = (tokenizer.eos_id, tokenizer.token_id("<end_of_turn>"))
    self.stop_ids = tuple(int(i) for i in stop_ids)

  def format(self, prompt: str) -> str:
    """The model input for one prompt: through the template (as the instruction) if set."""
    return self.template.format(prompt) if self.template is not None else prompt

  def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded [B, T] ids (with <bos>) and mask."""
    ids = [self.tokenizer.encode(self.format(p), add_bos=True) for p in prompts]
    batch = batching.left_pad_prompts(ids)
    return batch["tokens"], batch["input_mask"]

  def __call__(self, prompts: Sequence[str] | str, max_new_tokens: int,
               sampling: SamplingParams = SamplingParams(), rng: Array | None = None,
               return_logprobs: bool = False) -> SampleOutput:
    if isinstance(prompts, str):
      prompts = [prompts]
    if not prompts:
      raise ValueError("no prompts given")
    if rng is None:
      if not sampling.greedy:
        raise ValueError("sampling with temperature > 0 needs an rng key")
      rng = jax.random.key(0)
    tokens, mask = self.encode(prompts)
    out = generate(self.cfg, self.params, tokens, mask, rng, max_new_tokens, sampling,
                   self.stop_ids, max(self.tokenizer.pad_id, 0), return_logprobs)
    ids, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    text = []
    for row, n in enumerate(lengths):
      row_ids = ids[row, :n].tolist()
      if row_ids and row_ids[-1] in self.stop_ids:
        row_ids = row_ids[:-1]
      text.append(self.tokenizer.decode(row_ids))
    return dataclasses.replace(out, text=text)
