"""SentencePiece tokenizer for Gemma, loaded from a .model file or a serialized model proto.

A GGUF checkpoint's vocabulary is rebuilt into such a proto by
`alignment.checkpoints.gguf_tokenizer.tokenizer_from_gguf`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

import numpy as np
import sentencepiece as spm

PathLike = str | os.PathLike

class Tokenizer:
  """Text <-> ids. Wraps `sentencepiece.SentencePieceProcessor`; adds Gemma conventions."""

  def __init__(self, processor: spm.SentencePieceProcessor, source: str = "tokenizer"):
    self._sp = processor
    self.source = source

  # -- constructors ----------------------------------------------------------------------
  @classmethod
  def from_model_file(cls, path: PathLike) -> Tokenizer:
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"SentencePiece model {path} not found")
    return cls.from_serialized_proto(path.read_bytes(), source=str(path))

  @classmethod
  def from_serialized_proto(cls, data: bytes, source: str = "serialized proto") -> Tokenizer:
    processor = spm.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(data)
    except RuntimeError as e:
      raise ValueError(f"{source}: not a valid SentencePiece model ({e})") from None
    return cls(processor, source)

  # -- encoding ------------------------------------------------------------------------
  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    if not isinstance(text, str):
      raise TypeError(f"encode expects a str, got {type(text).__name__}")
    ids = self._sp.EncodeAsIds(text)
    return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in np.asarray(ids, np.int64).reshape(-1)]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"{self.source}: token ids {bad[:5]} outside the vocabulary "
                       f"[0, {self.vocab_size})")
    return self._sp.DecodeIds(ids)

  def token_id(self, piece: str) -> int:
    """The id of an exact vocabulary piece (e.g. '<end_of_turn>'); KeyError if absent."""
    i = self._sp.PieceToId(piece)
    if i == self._sp.unk_id() and piece != self._sp.IdToPiece(i):
      raise KeyError(f"{self.source}: piece {piece!r} is not in the vocabulary")
    return i

  def piece(self, token_id: int) -> str:
    return self._sp.IdToPiece(int(token_id))

  def serialized_proto(self) -> bytes:
    """The SentencePiece model as bytes (to save next to a checkpoint)."""
    return self._sp.serialized_model_proto()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def pad_id(self) -> int:
    """-1 when the model defines no padding piece (SentencePiece's convention)."""
    return self._sp.pad_id()

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  def __repr__(self) -> str:
    return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"

