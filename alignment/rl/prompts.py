"""Prompts for jobs that train on their own policy's answers (PPO, rejection sampling, context
distillation), and a resumable iterator over them.

Sources: instruction sets (Alpaca, the Self-Instruct seeds; instruction and input joined),
evaluation sets (their prompts), HH conversations (the human turn of one-turn transcripts,
e.g. HH harmless's red-team requests) and a user's file of any of these kinds (a preference
file's prompt is the request). The iterator's position (epoch, index) is what a
checkpoint saves as the data state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignment import schema
from alignment.data import sources as sources_lib
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair

_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclasses.dataclass(frozen=True)
class RLPrompt:
  text: str
  source: str  # the data source it came from (e.g. rewards that treat unsafe sources apart)


def single_turn_request(pair: PreferencePair) -> str | None:
  """The human's message of a one-turn HH prompt ("\\n\\nHuman: ...\\n\\nAssistant:"), else None."""
  text = pair.prompt
  if not text.startswith(_HUMAN) or not text.endswith(_ASSISTANT):
    return None
  body = text[len(_HUMAN):-len(_ASSISTANT)]
  if _HUMAN in body or _ASSISTANT in body:
    return None
  return body.strip() or None


def record_prompt(record, source: str = "") -> str | None:
  """The request text of a record of any kind (None for multi-turn HH transcripts)."""
  if isinstance(record, InstructionExample):
    return f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
  if isinstance(record, EvalPrompt):
    return record.prompt
  if isinstance(record, PreferencePair):
    if not record.prompt.startswith(_HUMAN):  # a user's pair: the prompt is the request
      return record.prompt.strip() or None
    return single_turn_request(record)
  raise ValueError(f"source {source!r}: cannot take a prompt from a {type(record).__name__}")


def load_prompts(sources: str | Sequence[str], data_dir: str | None, seed: int,
                 num_prompts: int = 0, per_source: int = 0, columns: str = ""
                 ) -> list[RLPrompt]:
  """Distinct prompts from the named sources or files (a list or a comma-separated string),
  in a random order drawn with `seed`; `columns` renames a file's columns (user_files.py).

  per_source: at most this many from each source, a seeded random subset (0 = all).
  num_prompts: exactly this many in all (0 = all); an error when the sources hold fewer.
  """
  names = list(schema.names(sources))
  names = [n for n in names if n]
  if not names:
    raise ValueError("no prompt sources given: name one or more data sources")
  if num_prompts < 0 or per_source < 0:
    raise ValueError(f"num_prompts={num_prompts} and per_source={per_source} must be >= 0 "
                     "(0 = all)")
  prompts: list[RLPrompt] = []
  seen: set[str] = set()
  for name in names:
    texts = []
    for record in sources_lib.load(name, data_dir, columns=columns):
      text = record_prompt(record, name)
      if text and text.strip() and text not in seen:
        seen.add(text)
        texts.append(text)
    if not texts:
      raise ValueError(f"prompt source {name!r} yielded no usable prompts")
    if per_source and len(texts) > per_source:
      pick = np.random.default_rng(seed).choice(len(texts), per_source, replace=False)
      texts = [texts[i] for i in sorted(pick)]
    prompts.extend(RLPrompt(t, name) for t in texts)
  if num_prompts > len(prompts):
    raise ValueError(f"num_prompts={num_prompts} but sources {names} hold only "
                     f"{len(prompts)} distinct prompts")
  order = np.random.default_rng(seed).permutation(len(prompts))
  return [prompts[i] for i in order[:num_prompts or None]]


def tokenize_prompts(prompts: Sequence[RLPrompt], tokenizer: Any, template: Any,
                     max_length: int, needed: int) -> list[tuple[RLPrompt, list[int]]]:
  """(prompt, ids) for each prompt through `template` with <bos>; over-long ones (more than
  `max_length` ids, PPO's rollout.max_prompt_length) dropped, an error if fewer than
  `needed` (rollout.prompts_per_iteration) are left."""
  kept = []
  for prompt in prompts:
    ids = tokenizer.encode(template.format(prompt.text), add_bos=True)
    if len(ids) <= max_length:
      kept.append((prompt, ids))
  if len(kept) < needed:
    raise ValueError(f"only {len(kept)} of {len(prompts)} prompts fit "
                     f"rollout.max_prompt_length={max_length}; need at "
                     f"least rollout.prompts_per_iteration={needed}")
  return kept


class PromptIterator:
  """Endless batches of prompts (any items, e.g. (RLPrompt, token ids)), reshuffled each epoch
  by (seed, epoch); resumable."""

  def __init__(self, prompts: Sequence[Any], batch_size: int, seed: int):
    if batch_size < 1 or batch_size > len(prompts):
      raise ValueError(f"prompt batch size {batch_size} must be in [1, {len(prompts)}] "
                       "(the number of prompts)")
    self.prompts = list(prompts)
    self.batch_size = batch_size
    self.seed = seed
    self.epoch = 0
    self.index = 0

  def _order(self) -> np.ndarray:
    return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))

  def __iter__(self) -> PromptIterator:
    return self

  def __next__(self) -> list[Any]:
    if self.index + self.batch_size > len(self.prompts):  # drop the ragged tail
      self.epoch, self.index = self.epoch + 1, 0
    order = self._order()
    batch = [self.prompts[i] for i in order[self.index:self.index + self.batch_size]]
    self.index += self.batch_size
    return batch

  def get_state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "index": self.index}

  def set_state(self, state: dict[str, int]) -> None:
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
