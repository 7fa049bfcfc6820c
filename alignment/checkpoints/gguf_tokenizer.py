"""The Gemma SentencePiece tokenizer rebuilt from a GGUF file's vocabulary.

A GGUF file carries the vocabulary (pieces, scores, types) but not the SentencePiece model
proto. `tokenizer_from_gguf` rebuilds that proto with SentencePiece's own protobuf classes, so
encoding is done by SentencePiece itself, and caches the result beside the GGUF file. It sits
with the GGUF reader (checkpoints), above the tokenizer it builds.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from alignment.checkpoints.gguf import read_gguf, read_gguf_vocab
from alignment.tokenizer import Tokenizer

PathLike = str | os.PathLike

_Piece = spm_pb2.ModelProto.SentencePiece
# Chat-turn markers must be matched inside raw text (user-defined), not only inserted by id.
_USER_DEFINED = ("<start_of_turn>", "<end_of_turn>")
# Bumped whenever `_proto_from_gguf` changes, so stale cached .model files are not reused.
_BUILD_VERSION = 1
# Leading bytes of the GGUF hashed for the cache key; the whole metadata section (vocabulary
# included) sits at the start of the file and fits well inside this for Gemma-sized vocabs.
_KEY_BYTES = 32 << 20


def tokenizer_from_gguf(path: PathLike, cache_dir: PathLike | None = None) -> Tokenizer:
  """Rebuilds the SentencePiece model from a GGUF vocabulary; cached in `cache_dir`.

  The cache (default: the GGUF's own directory) is keyed by the file's size and a hash of
  its leading bytes, which hold the vocabulary, so a changed file is never served stale.
  """
  path = pathlib.Path(path)
  cache = _cache_path(path, pathlib.Path(cache_dir) if cache_dir else path.parent)
  if cache.is_file():
    try:
      return Tokenizer.from_serialized_proto(cache.read_bytes(), source=str(path))
    except (OSError, ValueError):
      pass  # an unreadable or corrupt cache entry is rebuilt below
  data = _proto_from_gguf(path).SerializeToString()
  tokenizer = Tokenizer.from_serialized_proto(data, source=str(path))
  _write_atomically(cache, data)
  return tokenizer


def _special_ids(meta: dict, tokens: list[str], path: pathlib.Path) -> dict[str, int]:
  """unk/bos/eos/pad ids from the GGUF metadata, else from the `<unk>`-style piece names."""
  ids = {}
  for name, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
    field = f"tokenizer.ggml.{key}_token_id"
    if field in meta:
      ids[name] = int(meta[field])
      if not 0 <= ids[name] < len(tokens):
        raise ValueError(f"{path}: {field}={ids[name]} is outside the vocabulary "
                         f"of {len(tokens)} pieces")
    elif f"<{name}>" in tokens:
      ids[name] = tokens.index(f"<{name}>")
    else:
      raise ValueError(f"{path}: metadata has no {field} and the vocabulary no <{name}> piece")
  return ids


def _proto_from_gguf(path: pathlib.Path) -> spm_pb2.ModelProto:
  """A Gemma SentencePiece (BPE, byte fallback) ModelProto from the GGUF's vocabulary.

  Undoes what llama.cpp's export changed: whitespace-run pieces were written with real
  spaces (SentencePiece spells them with U+2581), and `<unk>` and the chat markers were
  marked CONTROL (SentencePiece needs one UNKNOWN piece; the markers must match in text).
  """
  file = read_gguf(path)
  tokens, scores, types = read_gguf_vocab(file)
  tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in tokens]
  ids = _special_ids(file.metadata, tokens, path)
  types = types.copy()
  types[ids["unk"]] = _Piece.UNKNOWN
  for piece in _USER_DEFINED:
    if piece not in tokens:
      raise ValueError(f"{path}: GGUF vocabulary has no {piece} piece")
    types[tokens.index(piece)] = _Piece.USER_DEFINED

  proto = spm_pb2.ModelProto()
  trainer = proto.trainer_spec
  trainer.model_type = spm_pb2.TrainerSpec.BPE
  trainer.vocab_size = len(tokens)
  trainer.byte_fallback = True
  trainer.split_digits = True
  trainer.allow_whitespace_only_pieces = True
  for name, i in ids.items():
    setattr(trainer, f"{name}_id", i)
    setattr(trainer, f"{name}_piece", tokens[i])
  normalizer = proto.normalizer_spec
  normalizer.name = "identity"
  normalizer.add_dummy_prefix = bool(
      file.metadata.get("tokenizer.ggml.add_space_prefix", False))
  normalizer.remove_extra_whitespaces = False
  normalizer.escape_whitespaces = True
  for piece, score, kind in zip(tokens, scores.tolist(), types.tolist()):
    proto.pieces.add(piece=piece, score=score, type=kind)
  return proto


def _cache_path(gguf_path: pathlib.Path, cache_dir: pathlib.Path) -> pathlib.Path:
  try:
    size = gguf_path.stat().st_size
    with open(gguf_path, "rb") as f:
      digest = hashlib.sha256(f.read(_KEY_BYTES)).hexdigest()[:16]
  except OSError as e:
    raise FileNotFoundError(f"cannot read GGUF file {gguf_path}: {e}") from None
  return cache_dir / f"{gguf_path.stem}.{size}-{digest}.v{_BUILD_VERSION}.spm.model"


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
  """Best-effort cache write; concurrent builders race harmlessly via rename."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except OSError:
    pass  # read-only cache location: the tokenizer still works, just rebuilt next time
