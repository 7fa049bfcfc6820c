"""One process per run directory.

Two processes training into one workdir (a rerun started while the first still runs, two
sweep launchers) interleave checkpoints and overwrite each other's results. `RunLock` takes
an exclusive `fcntl.flock` on `<workdir>/.lock` and writes the holder (host, pid, start
time) into it; a second process fails at once with `WorkdirLockedError` naming the holder.
The kernel drops a flock when its descriptor closes, so a process that dies in any way
(SIGKILL included) releases the lock, and a leftover .lock file blocks no one.

Within one process the lock is re-entrant (tests and experiments run jobs on one workdir in
turn); `released_on_return` wraps a job's `run` so the lock is let go when the job ends.
A process that takes a workdir's lock owns the directory, so `hold` also removes the hidden
temporary files of atomic writes killed earlier (`files.atomic.remove_stale_temporaries`).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import functools
import json
import logging
import os
import pathlib
import socket
from collections.abc import Callable
from typing import Any

from alignment.files import atomic

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class WorkdirLockedError(RuntimeError):
  """Another live process holds the run directory's lock."""


def _holder_text(raw: str) -> str:
  try:
    holder = json.loads(raw)
    return f"host {holder['host']}, pid {holder['pid']}, since {holder['started']}"
  except (ValueError, KeyError, TypeError):
    return "holder not yet recorded"  # between its flock and its write


class RunLock:
  """An exclusive, non-blocking flock on `<workdir>/.lock`."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> RunLock:
    """Takes the lock or raises WorkdirLockedError naming who holds it."""
    if self._fd is not None:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
      os.close(fd)
      if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirLockedError(
          f"{self.path.parent} is in use by another run ({_holder_text(raw)}; lock file "
          f"{self.path}). Wait for it to finish, stop it, or use another workdir.") from None
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> RunLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


# Locks this process holds, by resolved workdir.
_HELD: dict[str, RunLock] = {}


def hold(workdir: str | os.PathLike) -> RunLock:
  """Takes (or, when this process has it already, keeps) the lock of `workdir`."""
  key = os.path.realpath(workdir)
  lock = _HELD.get(key)
  if lock is None or not lock.held:
    lock = _HELD[key] = RunLock(workdir).acquire()
    removed = atomic.remove_stale_temporaries(workdir)
    if removed:
      log.warning("%s: removed %d temporary file(s) of writes killed before this run: %s",
                  workdir, len(removed), ", ".join(str(p) for p in removed))
  return lock


def release_all(keep: set[str] | frozenset[str] = frozenset()) -> None:
  """Releases every lock this process holds except those of the workdirs in `keep`."""
  for key in [k for k in _HELD if k not in keep]:
    _HELD.pop(key).release()


def released_on_return(run: Callable[..., Any]) -> Callable[..., Any]:
  """Wraps a job's `run`: locks taken during the call are released when it returns or
  raises (locks held before the call, by an enclosing job, stay)."""

  @functools.wraps(run)
  def wrapper(*args, **kwargs):
    before = set(_HELD)
    try:
      return run(*args, **kwargs)
    finally:
      release_all(keep=before)

  return wrapper
