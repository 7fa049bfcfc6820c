"""The library's tiny SentencePiece model (alignment/tokenizer/tiny.py) as a file, for tests.

Tests that pass a tokenizer path to a job (`model.tokenizer=...`) get one written into their
temporary directory; the returned Tokenizer's `source` is that path.
"""

from __future__ import annotations

import pathlib

from alignment.tokenizer import Tokenizer
from alignment.tokenizer.tiny import write_tiny_model


def train_tiny_tokenizer(directory: pathlib.Path) -> Tokenizer:
  return Tokenizer.from_model_file(write_tiny_model(directory))
