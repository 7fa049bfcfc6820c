"""Records -> token ids for training and generation, with a response-only loss mask.

Prompt and response are encoded separately and concatenated, so the boundary between them is
exact: the loss mask is 0 on every prompt token (BOS included) and 1 on every response token,
the template's `response_suffix` (e.g. `<end_of_turn>`) and EOS. Encoding them separately can
differ from encoding the joined text at the seam by a token; it is how the model is trained
and how it is prompted at generation time (prompt ids, then sampled ids), so the two agree.

Convention: `loss_mask[t]` weights the prediction *of* token t (made from position t - 1), so a
trainer compares logits[:, :-1] with tokens[:, 1:] weighted by loss_mask[:, 1:]. BOS is never a
target, which also keeps packed rows from scoring one segment's EOS -> next segment's BOS.

Too-long examples keep their whole prompt and lose the end of their response (counted in
`TokenizeStats.truncated`); a prompt that leaves no room for a single response token raises
`PromptTooLongError`, or is skipped and counted when the caller asks for that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair
from alignment.prompts.templates import PromptTemplate

if TYPE_CHECKING:
  from alignment.tokenizer.tokenizer import Tokenizer

# One tokenized SFT example: {"tokens": int32 [L], "loss_mask": float32 [L]}.
Example = dict[str, np.ndarray]
# One tokenized preference pair: {"prompt", "chosen", "rejected": int32 [*], "margin": float32 []}.
Pair = dict[str, np.ndarray]


class PromptTooLongError(ValueError):
  """The prompt alone fills `max_length`, so no response token could be trained on."""


@dataclasses.dataclass
class TokenizeStats:
  """Counts from tokenizing a dataset, for logging and for honest throughput figures."""

  examples: int = 0  # examples kept
  truncated: int = 0  # kept examples whose response was cut to fit max_length
  skipped: int = 0  # examples dropped because the prompt alone did not fit
  tokens: int = 0  # tokens in kept examples (after truncation)
  target_tokens: int = 0  # tokens with loss weight 1


def _describe(record, index: int | None) -> str:
  where = f"record {index}" if index is not None else "record"
  source = getattr(record, "source", "") or "?"
  text = getattr(record, "instruction", None) or getattr(record, "prompt", "")
  snippet = text[:60].replace("\n", " ")
  return f"{where} (source {source!r}, prompt {snippet!r}{'...' if len(text) > 60 else ''})"


def _ids(values: Sequence[int]) -> np.ndarray:
  return np.asarray(values, dtype=np.int32)


def instruction_prompt(example: InstructionExample, template: PromptTemplate,
                       system: str = "") -> str:
  """The prompt text the model sees for one instruction example."""
  return template.format(example.instruction, example.input, system)


def encode_prompt(text: str, tokenizer: Tokenizer) -> np.ndarray:
  """Prompt ids as generation expects them: BOS, then the prompt text; no EOS."""
  return _ids(tokenizer.encode(text, add_bos=True))


def encode_response(text: str, template: PromptTemplate | None,
                    tokenizer: Tokenizer) -> np.ndarray:
  """Response ids the model is trained to produce: text, the template's end marker, EOS."""
  suffix = template.response_suffix if template is not None else ""
  return _ids(tokenizer.encode(text + suffix, add_eos=True))


def _check_room(prompt_len: int, max_length: int, record, index: int | None) -> None:
  if prompt_len >= max_length:
    raise PromptTooLongError(
        f"{_describe(record, index)}: the prompt is {prompt_len} tokens (BOS included) but "
        f"max_length is {max_length}, leaving no room for the response; raise max_length, "
        f"filter long prompts, or skip them (skip_long_prompts=True)")


def tokenize_example(example: InstructionExample, template: PromptTemplate,
                     tokenizer: Tokenizer, max_length: int, system: str = "",
                     index: int | None = None) -> tuple[Example, bool]:
  """One SFT example -> ({"tokens", "loss_mask"}, whether the response was truncated).

  `index` only serves error messages (which record of a dataset failed).
  """
  if not example.output.strip():
    raise ValueError(f"{_describe(example, index)}: empty output; nothing to train on "
                     f"(drop such examples in data hygiene first)")
  prompt = encode_prompt(instruction_prompt(example, template, system), tokenizer)
  _check_room(len(prompt), max_length, example, index)
  response = encode_response(example.output, template, tokenizer)
  room = max_length - len(prompt)
  truncated = len(response) > room
  response = response[:room]
  tokens = np.concatenate([prompt, response])
  loss_mask = np.concatenate([np.zeros(len(prompt), np.float32),
                              np.ones(len(response), np.float32)])
  return {"tokens": tokens, "loss_mask": loss_mask}, truncated


def tokenize_examples(examples: Iterable[InstructionExample], template: PromptTemplate,
                      tokenizer: Tokenizer, max_length: int, system: str = "",
                      skip_long_prompts: bool = False) -> tuple[list[Example], TokenizeStats]:
  """Tokenizes a whole dataset eagerly, so errors and truncation counts come before training."""
  out: list[Example] = []
  stats = TokenizeStats()
  for i, example in enumerate(examples):
    try:
      tokenized, truncated = tokenize_example(example, template, tokenizer, max_length,
                                              system, index=i)
    except PromptTooLongError:
      if not skip_long_prompts:
        raise
      stats.skipped += 1
      continue
    out.append(tokenized)
    stats.examples += 1
    stats.truncated += truncated
    stats.tokens += len(tokenized["tokens"])
    stats.target_tokens += int(tokenized["loss_mask"].sum())
  if not out:
    raise ValueError(f"no examples left to train on (skipped {stats.skipped} whose prompt "
                     f"exceeds max_length {max_length})" if stats.skipped else
                     "empty dataset: no instruction examples were given")
  return out, stats


def tokenize_pair(pair: PreferencePair, tokenizer: Tokenizer, max_length: int,
                  template: PromptTemplate | None = None,
                  index: int | None = None) -> tuple[Pair, bool]:
  """One preference pair -> shared prompt ids plus each response's ids.

  The prompt is encoded once and shared by both sides; each response is cut so that prompt +
  response fits in `max_length`. With a template, the pair's prompt is used as its instruction
  (and responses get its end marker); without, the prompt text is used as it is (e.g. an HH
  "Human: ... Assistant:" transcript).
  """
  for name in ("chosen", "rejected"):
    if not getattr(pair, name).strip():
      raise ValueError(f"{_describe(pair, index)}: empty {name} response")
  text = template.format(pair.prompt) if template is not None else pair.prompt
  prompt = encode_prompt(text, tokenizer)
  _check_room(len(prompt), max_length, pair, index)
  room = max_length - len(prompt)
  chosen = encode_response(pair.chosen, template, tokenizer)
  rejected = encode_response(pair.rejected, template, tokenizer)
  truncated = max(len(chosen), len(rejected)) > room
  margin = np.float32(0.0 if pair.margin is None else pair.margin)
  return {"prompt": prompt, "chosen": chosen[:room], "rejected": rejected[:room],
          "margin": margin}, truncated


def tokenize_pairs(pairs: Iterable[PreferencePair], tokenizer: Tokenizer, max_length: int,
                   template: PromptTemplate | None = None,
                   skip_long_prompts: bool = False) -> tuple[list[Pair], TokenizeStats]:
  """Tokenizes a preference dataset eagerly (see `tokenize_examples`)."""
  out: list[Pair] = []
  stats = TokenizeStats()
  for i, pair in enumerate(pairs):
    try:
      tokenized, truncated = tokenize_pair(pair, tokenizer, max_length, template, index=i)
    except PromptTooLongError:
      if not skip_long_prompts:
        raise
      stats.skipped += 1
      continue
    out.append(tokenized)
    stats.examples += 1
    stats.truncated += truncated
    responses = len(tokenized["chosen"]) + len(tokenized["rejected"])
    stats.tokens += 2 * len(tokenized["prompt"]) + responses
    stats.target_tokens += responses
  if not out:
    raise ValueError(f"no pairs left (skipped {stats.skipped} whose prompt exceeds "
                     f"max_length {max_length})" if stats.skipped else
                     "empty dataset: no preference pairs were given")
  return out, stats


def tokenize_eval_prompt(prompt: EvalPrompt, tokenizer: Tokenizer,
                         template: PromptTemplate | None = None, system: str = "") -> np.ndarray:
  """Prompt ids for generation: BOS + the templated prompt (the model continues from there)."""
  if not prompt.prompt.strip():
    raise ValueError(f"eval prompt {prompt.id or '?'} of {prompt.source!r} is empty")
  text = template.format(prompt.prompt, system=system) if template is not None else prompt.prompt
  return encode_prompt(text, tokenizer)
