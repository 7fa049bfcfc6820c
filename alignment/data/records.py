"""Typed records that every data source yields, whatever its file format."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class InstructionExample:
  """One supervised example: prompt fields plus the target response."""

  instruction: str
  output: str
  input: str = ""
  source: str = ""  # name of the source it came from, e.g. "alpaca"
  # "instruction" (imperative, as published) or "question" (rewritten as a question).
  prompt_format: str = "instruction"
  tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """A prompt (possibly a multi-turn transcript) with a preferred and a rejected reply."""

  prompt: str
  chosen: str
  rejected: str
  source: str = ""
  # Optional preference strength (Llama 2's margin term); None when the data has none.
  margin: float | None = None


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
  """A prompt from an evaluation set; `label` is "safe"/"unsafe" where the set says so."""

  prompt: str
  source: str
  id: str = ""
  label: str | None = None
  tags: tuple[str, ...] = ()
