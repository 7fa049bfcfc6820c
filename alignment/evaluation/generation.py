"""Evaluation prompts -> answer records, batched through the KV-cache sampler.

Prompts are sorted by their tokenized length before batching, so each batch pads little and
the sampler's shape buckets are reused from one batch to the next; records come back in the
order the prompts were given. With greedy decoding (the default) an answer does not depend on
which other prompts share its batch, so sorting changes speed, not results.

The record keeps the raw prompt (not the templated model input): scorers and the XSTest
labeller match records to their sets by it, and the template is a property of the run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import jax

from alignment.answers.records import AnswerRecord
from alignment.data.records import EvalPrompt
from alignment.sampling import Sampler, SamplingParams
from alignment.training.metrics import format_duration

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GenerationStats:
  """What a generation pass cost: prompts, batches, generated tokens and wall time."""

  prompts: int
  batches: int
  generated_tokens: int
  seconds: float

  @property
  def tokens_per_second(self) -> float:
    return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

  def to_json(self) -> dict[str, float]:
    """The fields and the rate, as result.json stores them."""
    return {**dataclasses.asdict(self), "tokens_per_second": self.tokens_per_second}


class AnswerProgress:
  """An `on_batch` callback logging 'answered batch k/n (a/m prompts), r answers/s, eta t'.

  The rate is measured from the end of the first batch (which includes compilation) once
  there is a second; at the first batch it is that batch's own. Batches run longest first,
  so the ETA errs long.
  """

  def __init__(self, num_prompts: int, batch_size: int,
               emit: Callable[[str], None] = log.info,
               clock: Callable[[], float] = time.perf_counter):
    self.num_prompts, self.batch_size, self.emit, self.clock = num_prompts, batch_size, emit, clock
    self._start = clock()
    self._first: tuple[float, int] | None = None  # (time, answers) after the first batch

  def __call__(self, done: int, total: int) -> None:
    now = self.clock()
    answers = min(done * self.batch_size, self.num_prompts)
    if self._first is None:
      self._first = (now, answers)
      t0, a0 = self._start, 0
    else:
      t0, a0 = self._first
    rate = (answers - a0) / (now - t0) if now > t0 else 0.0
    left = self.num_prompts - answers
    eta = format_duration(left / rate) if rate > 0 else "?"
    self.emit(f"answered batch {done}/{total} ({answers}/{self.num_prompts} prompts), "
              f"{rate:.3g} answers/s, eta {eta}")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
  """Indices grouped into batches of at most `batch_size`, longest prompts first.

  Longest first: the slowest (and most memory-hungry) batch runs while a failure is cheapest.
  The sort is stable, so equal lengths keep their input order.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
  return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def generate_answers(sampler: Sampler, prompts: Sequence[EvalPrompt], *, max_new_tokens: int,
                     batch_size: int, sampling: SamplingParams = SamplingParams(),
                     rng: jax.Array | None = None,
                     on_batch: Callable[[int, int], None] | None = None
                     ) -> tuple[list[AnswerRecord], GenerationStats]:
  """One `AnswerRecord` per prompt (same order), and what generating them cost.

  Each batch samples with its own key (`rng` folded with the batch index), so temperature
  sampling is reproducible given `rng` and `batch_size`. `on_batch(done, total)` is called
  after each batch (progress reporting).
  """
  if not prompts:
    raise ValueError("no prompts to answer")
  seen: dict[tuple[str, str], int] = {}
  for i, p in enumerate(prompts):
    key = (p.source, p.id)
    if key in seen:
      raise ValueError(f"prompt {p.source}/{p.id} appears twice (positions {seen[key]} and {i})"
                       "; ids must be unique within a set")
    seen[key] = i
  if rng is None:
    if not sampling.greedy:
      raise ValueError("sampling with temperature > 0 needs an rng key")
    rng = jax.random.key(0)
  lengths = [len(sampler.tokenizer.encode(sampler.format(p.prompt), add_bos=True))
             for p in prompts]
  batches = length_sorted_batches(lengths, batch_size)
  answers: list[str | None] = [None] * len(prompts)
  generated = 0
  start = time.perf_counter()
  for b, indices in enumerate(batches):
    out = sampler([prompts[i].prompt for i in indices], max_new_tokens, sampling,
                  rng=jax.random.fold_in(rng, b))
    generated += int(out.lengths.sum())
    for i, text in zip(indices, out.text):
      answers[i] = text
    if on_batch is not None:
      on_batch(b + 1, len(batches))
  seconds = time.perf_counter() - start
  records = [AnswerRecord(set=p.source, id=p.id, prompt=p.prompt, answer=a, label=p.label)
             for p, a in zip(prompts, answers)]
  return records, GenerationStats(len(prompts), len(batches), generated, seconds)
