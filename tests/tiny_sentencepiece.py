"""A tiny SentencePiece model trained in a few hundred ms, for fast tokenizer-level tests.

Laid out like Gemma's (pad 0, eos 1, bos 2, unk 3, chat markers user-defined, byte fallback,
no normalisation) so that code written against the real tokenizer runs unchanged on it.
"""

from __future__ import annotations

import pathlib

import sentencepiece as spm

from alignment.tokenizer import Tokenizer

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


def train_tiny_tokenizer(directory: pathlib.Path) -> Tokenizer:
  lines = [line.strip() for line in _TEXT.splitlines() if line.strip()] * 20
  prefix = directory / "tiny_sp"
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=600,
      model_type="bpe", byte_fallback=True, character_coverage=1.0,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, minloglevel=2)
  return Tokenizer.from_model_file(prefix.with_suffix(".model"))
