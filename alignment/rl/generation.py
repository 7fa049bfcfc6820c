"""Prompts in, answers out, for jobs that train on their own policy's generations.

A `SampleFn(model_inputs, rng) -> answers` takes fully formatted model inputs (template and any
preamble already applied), so what the model saw is explicit and a test can substitute a fake.
`sampler_fn` builds one from the KV-cache `Sampler`; `generate_in_batches` feeds it
fixed-size chunks so the sampler compiles once per shape bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from alignment.sampling import Sampler, SamplingParams

SampleFn = Callable[[Sequence[str], jax.Array], list[str]]


def sampler_fn(sampler: Sampler, max_new_tokens: int, sampling: SamplingParams) -> SampleFn:
  """A `SampleFn` over a `Sampler` built without a template (inputs arrive formatted)."""
  if sampler.template is not None:
    raise ValueError("sampler_fn expects a Sampler without a template: the jobs format every "
                     "model input themselves (template, preamble)")

  def sample(inputs: Sequence[str], rng: jax.Array) -> list[str]:
    return list(sampler(list(inputs), max_new_tokens, sampling, rng).text)

  return sample


def generate_in_batches(sample_fn: SampleFn, inputs: Sequence[str], batch_size: int,
                        rng: jax.Array) -> list[str]:
  """One answer per input, `batch_size` inputs per call; call i draws with fold_in(rng, i)."""
  if batch_size < 1:
    raise ValueError(f"generation batch_size must be >= 1, got {batch_size}")
  answers: list[str] = []
  for i, start in enumerate(range(0, len(inputs), batch_size)):
    chunk = list(inputs[start:start + batch_size])
    out = sample_fn(chunk, jax.random.fold_in(rng, i))
    if len(out) != len(chunk):
      raise ValueError(f"the sampler returned {len(out)} answers for {len(chunk)} prompts")
    answers.extend(out)
  return answers
