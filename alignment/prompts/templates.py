"""Prompt templates for training and generation.

A template turns (instruction, optional input, optional system preamble) into the prompt text
the model sees; the response follows it directly. Two built-ins cover the research setups: the
Alpaca template the Safety-Tuned LLaMAs paper trained with, and Gemma's chat turns.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """Format strings with `{instruction}`, `{input}` and optionally `{system}` placeholders.

  A template without `{system}` gets the formatted preamble in front of the whole prompt.
  """

  name: str
  prompt_input: str  # used when the example has a non-empty input
  prompt_no_input: str
  # Marks the start of the response in a formatted transcript (for splitting generations).
  response_split: str
  # Wraps a system/safety preamble; empty preamble means the wrapper is omitted.
  system_format: str = "{system}\n\n"
  # Text appended after the response when training (e.g. Gemma's end-of-turn marker).
  response_suffix: str = ""

  def format(self, instruction: str, input: str = "", system: str = "") -> str:  # pylint: disable=redefined-builtin
    """The prompt for one example; the model's response is meant to follow it directly."""
    text = self.prompt_input if input else self.prompt_no_input
    preamble = self.system_format.format(system=system) if system else ""
    if "{system}" not in text:  # no marked place for a preamble: it goes first
      text, preamble = "{system}" + text, preamble
    return text.format(instruction=instruction, input=input, system=preamble)

  def split_response(self, text: str) -> str:
    """The response part of a generated transcript (everything after `response_split`)."""
    return text.split(self.response_split, 1)[-1].strip() if self.response_split else text


ALPACA = PromptTemplate(
    name="alpaca",
    prompt_input=(
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    prompt_no_input=(
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"),
    response_split="### Response:",
)

# Gemma turns; Gemma has no system role, so a preamble opens the user turn.
GEMMA_CHAT = PromptTemplate(
    name="gemma_chat",
    prompt_input=("<start_of_turn>user\n{system}{instruction}\n\n{input}<end_of_turn>\n"
                  "<start_of_turn>model\n"),
    prompt_no_input="<start_of_turn>user\n{system}{instruction}<end_of_turn>\n<start_of_turn>model\n",
    response_split="<start_of_turn>model\n",
    system_format="{system}\n\n",
    response_suffix="<end_of_turn>",
)

_BUILTIN = {t.name: t for t in (ALPACA, GEMMA_CHAT)}


def get_template(name: str) -> PromptTemplate:
  if name not in _BUILTIN:
    raise KeyError(f"unknown prompt template {name!r}; known: {', '.join(sorted(_BUILTIN))}")
  return _BUILTIN[name]


def template_or_none(name: str) -> PromptTemplate | None:
  """The template `config.template` names for a sampling job, or None for 'none' (the raw
  prompt); a ValueError naming the key for an unknown name."""
  if name == "none":
    return None
  try:
    return get_template(name)
  except KeyError as e:
    raise ValueError(f"config.template: {e.args[0]} (or 'none')") from None


def load_alpaca_style_template(path: str | pathlib.Path) -> PromptTemplate:
  """Reads a template file in the Alpaca-LoRA JSON format (prompt_input, prompt_no_input...)."""
  path = pathlib.Path(path)
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  missing = [k for k in ("prompt_input", "prompt_no_input", "response_split") if k not in raw]
  if missing:
    raise ValueError(f"{path}: template is missing field(s) {', '.join(missing)}")
  return PromptTemplate(name=path.stem, prompt_input=raw["prompt_input"],
                        prompt_no_input=raw["prompt_no_input"],
                        response_split=raw["response_split"])
