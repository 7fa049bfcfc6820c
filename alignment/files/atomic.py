"""Result files written whole or not at all.

A process killed mid-write (SIGKILL, a full disk, a VM going) used to leave a truncated
result.json or answers.jsonl that a sweep then took for a finished run and a report for its
data. Each helper here writes to a temporary file in the same directory, fsyncs it and
`os.replace`s it onto the target (atomic on POSIX within one filesystem): a reader sees the
old file or the new one, never part of one.

A process killed by SIGKILL mid-write leaves its hidden temporary file (`.<name>.<8
random>.tmp`) beside the target; `remove_stale_temporaries` clears those once a new holder
owns the directory (see `training/run_lock.hold`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

# The names `tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")` gives: 8 characters of
# tempfile's alphabet between them.
TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
# A subdirectory holding this file is another run's directory (training/run_lock.py): its
# temporaries are its holder's business.
_OTHER_RUN_MARKER = ".lock"
# Every temporary file of this process is younger than this module's import; the margin
# covers filesystems whose mtimes lag the clock by a tick.
_IMPORTED = time.time()
_MTIME_MARGIN_S = 1.0


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


@contextlib.contextmanager
def writing_directory(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """A hidden temporary directory beside `path` to fill; when the block ends without an
  exception it replaces `path` (an old one is moved aside first and then removed, so a
  failure never leaves neither); on one, it is removed and `path` is left as it was."""
  out = pathlib.Path(path).absolute()
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    yield tmp
    if out.exists():
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
      os.replace(out, old / out.name)
      os.replace(tmp, out)
      shutil.rmtree(old)
    else:
      os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
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


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> pathlib.Path:
  """One JSON object a line (non-ASCII kept), written atomically."""
  with writing(path) as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return pathlib.Path(path)


def remove_stale_temporaries(directory: str | os.PathLike,
                             before: float | None = None) -> list[pathlib.Path]:
  """Deletes, under `directory`, the temporary files of writes that were killed: files named
  like this module's temporaries and last modified before `before` (default: a second before
  this module was imported, so no write of this process is touched). Subdirectories holding
  a `.lock` (other runs) and symlinks are not entered. Returns what was removed.

  Call it only while holding the directory (its run lock): a live writer of another process
  would lose its file.
  """
  cutoff = _IMPORTED - _MTIME_MARGIN_S if before is None else before
  root = pathlib.Path(directory)
  removed = []
  for current, dirs, files in os.walk(root):
    here = pathlib.Path(current)
    dirs[:] = [d for d in dirs if not (here / d).is_symlink()
               and not (here / d / _OTHER_RUN_MARKER).exists()]
    for name in files:
      if not TEMPORARY_NAME.match(name):
        continue
      path = here / name
      try:
        stat = path.lstat()
        if stat.st_mtime < cutoff and path.is_file() and not path.is_symlink():
          path.unlink()
          removed.append(path)
      except FileNotFoundError:  # its writer finished (or failed) meanwhile
        continue
  return removed
