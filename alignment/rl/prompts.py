"""Prompts for RL rollouts and a resumable iterator over them.

Sources: instruction sets (Alpaca, the Self-Instruct seeds; instruction and input joined) and
HH conversations (the opening human turn of single-turn transcripts, e.g. HH harmless's red-team
prompts). The iterator's position (epoch, index) is what a checkpoint saves as the data state.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignment.data import sources as sources_lib
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair

_HUMAN = re.compile(r"\n\nHuman:")


@dataclasses.dataclass(frozen=True)
class RLPrompt:
  text: str
  source: str


def _prompt_of(record, source: str) -> str | None:
  if isinstance(record, InstructionExample):
    return f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
  if isinstance(record, PreferencePair):
    if len(_HUMAN.findall(record.prompt)) != 1:  # multi-turn transcripts are skipped
      return None
    return record.prompt.split("\n\nHuman:", 1)[1].rsplit("\n\nAssistant:", 1)[0].strip()
  if isinstance(record, EvalPrompt):
    return record.prompt
  raise TypeError(f"source {source!r}: records of type {type(record).__name__} are not prompts")


def load_prompts(names: Sequence[str], data_dir: str | None, per_source: int, seed: int,
                 ) -> list[RLPrompt]:
  """Up to `per_source` prompts from each named source (a seeded random subset; 0 = all)."""
  if not names:
    raise ValueError("prompts.sources is empty: name at least one data source")
  out: list[RLPrompt] = []
  for name in names:
    texts = [t for t in (_prompt_of(r, name) for r in sources_lib.load(name, data_dir)) if t]
    if not texts:
      raise ValueError(f"prompt source {name!r} yielded no usable prompts")
    if per_source and len(texts) > per_source:
      pick = np.random.default_rng(seed).choice(len(texts), per_source, replace=False)
      texts = [texts[i] for i in sorted(pick)]
    out.extend(RLPrompt(t, name) for t in texts)
  return out


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
