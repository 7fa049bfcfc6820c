"""Prompts in, answers out, for jobs that train on their own policy's generations.

A `SampleFn(model_inputs, rng) -> answers` takes fully formatted model inputs (template and any
preamble already applied), so what the model saw is explicit and a test can substitute a fake.
`sampler_fn` builds one from the KV-cache `Sampler`; `generate_in_batches` feeds it
fixed-size chunks so the sampler compiles once per shape bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from alignment.data import sources
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair
from alignment.sampling import Sampler, SamplingParams

SampleFn = Callable[[Sequence[str], jax.Array], list[str]]

_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


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


def single_turn_request(pair: PreferencePair) -> str | None:
  """The human's message of a one-turn HH prompt ("\\n\\nHuman: ...\\n\\nAssistant:"), else None."""
  text = pair.prompt
  if not text.startswith(_HUMAN) or not text.endswith(_ASSISTANT):
    return None
  body = text[len(_HUMAN):-len(_ASSISTANT)]
  if _HUMAN in body or _ASSISTANT in body:
    return None
  return body.strip() or None


def record_prompt(record) -> str | None:
  """The request text of a record of any kind (None for multi-turn HH transcripts)."""
  if isinstance(record, InstructionExample):
    return f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
  if isinstance(record, EvalPrompt):
    return record.prompt
  if isinstance(record, PreferencePair):
    return single_turn_request(record)
  raise ValueError(f"cannot take a prompt from a {type(record).__name__}")


def load_prompts(source_names: str, data_dir: str | None, num_prompts: int,
                 seed: int) -> list[str]:
  """`num_prompts` distinct prompts (0 = all) drawn with `seed` from comma-separated sources.

  Instruction sets give their instructions, evaluation sets their prompts, HH preference sets
  the human turn of their one-turn conversations.
  """
  names = [n.strip() for n in source_names.split(",") if n.strip()]
  if not names:
    raise ValueError("data.prompt_source is empty; name one or more data sources")
  prompts: list[str] = []
  seen: set[str] = set()
  for name in names:
    for record in sources.load(name, data_dir):
      text = record_prompt(record)
      if text and text.strip() and text not in seen:
        seen.add(text)
        prompts.append(text)
  if not prompts:
    raise ValueError(f"sources {names} gave no usable prompts")
  if num_prompts < 0:
    raise ValueError(f"data.num_prompts={num_prompts} must be >= 0 (0 = all)")
  order = np.random.default_rng(seed).permutation(len(prompts))
  if num_prompts:
    if num_prompts > len(prompts):
      raise ValueError(f"data.num_prompts={num_prompts} but sources {names} hold only "
                       f"{len(prompts)} distinct prompts")
    order = order[:num_prompts]
  return [prompts[i] for i in order]
