"""Result files written whole or not at all.

A process killed mid-write (SIGKILL, a full disk, a VM going) used to leave a truncated
result.json or answers.jsonl that a sweep then took for a finished run and a report for its
data. Each helper here writes to a temporary file in the same directory, fsyncs it and
`os.replace`s it onto the target (atomic on POSIX within one filesystem): a reader sees the
old file or the new one, never part of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def writing(path: str | os.PathLike, mode: str = "w",
            encoding: str | None = "utf-8") -> Iterator[IO]:
  """`open(path, mode)` for writing, made atomic: the file appears at `path` only when the
  block ends without an exception; on one, the target is left as it was."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic.writing: mode must be 'w' or 'wb', not {mode!r}")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide shared results from other users
    with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> pathlib.Path:
  with writing(path, "w", encoding) as f:
    f.write(text)
  return pathlib.Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
  with writing(path, "wb") as f:
    f.write(data)
  return pathlib.Path(path)


def write_json(path: str | os.PathLike, payload: Any, **dumps: Any) -> pathlib.Path:
  """json.dumps(payload, **dumps) (indent=2, default=str unless given), atomically."""
  dumps = {"indent": 2, "default": str, **dumps}
  return write_text(path, json.dumps(payload, **dumps))
