"""A 600-piece SentencePiece model trained in memory from a built-in paragraph.

The `tiny` presets of the jobs name it (`model.tokenizer="tiny"`) so that they run on a fresh
machine with no tokenizer file, and the tests use it for fast tokenizer-level checks. It is
laid out like Gemma's (pad 0, eos 1, bos 2, unk 3, chat markers user-defined, byte fallback,
no normalisation), so code written against the real tokenizer runs unchanged on it. Training
is deterministic and takes a few hundred milliseconds, so nothing is cached.
"""

from __future__ import annotations

import io
import os
import pathlib

import sentencepiece as spm

from alignment.tokenizer.tokenizer import Tokenizer

NAME = "tiny"  # the value of a model section's `tokenizer` that selects this model
VOCAB_SIZE = 600

_TEXT = """Below is an instruction that describes a task. Write a response that appropriately
completes the request. Give three tips for staying healthy. Eat a balanced diet and make sure
to include plenty of fruits and vegetables. Exercise regularly to keep your body active and
strong. Get enough sleep and maintain a consistent sleep schedule. What are the three primary
colors? The three primary colors are red, blue, and yellow. Describe the structure of an atom.
An atom is made up of a nucleus, which contains protons and neutrons, surrounded by electrons
that travel in orbits around the nucleus. How can we reduce air pollution? There are a number
of ways to reduce air pollution, such as shifting to renewable energy sources, encouraging the
use of public transportation, prohibiting the burning of fossil fuels. I'm sorry, but I cannot
help with that request because it could cause harm to people.
"""


def tiny_proto() -> bytes:
  """The serialized SentencePiece model (the same bytes on every call)."""
  lines = [line.strip() for line in _TEXT.splitlines() if line.strip()] * 20
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=VOCAB_SIZE,
      model_type="bpe", byte_fallback=True, character_coverage=1.0,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, num_threads=1, minloglevel=2)
  return model.getvalue()


def tiny_tokenizer() -> Tokenizer:
  return Tokenizer.from_serialized_proto(tiny_proto(), source=f"{NAME} (built-in, "
                                         f"{VOCAB_SIZE} pieces)")


def write_tiny_model(directory: str | os.PathLike) -> pathlib.Path:
  """Writes the model as `tiny_sp.model` in `directory` (for code that wants a file path)."""
  path = pathlib.Path(directory) / "tiny_sp.model"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(tiny_proto())
  return path
