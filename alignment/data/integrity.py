"""Whether a data directory's files are the ones the sources registry describes.

A run's numbers are only comparable with another's if both read the same bytes; a file
edited in place (a hand fix, a re-export, a partial copy) changes them silently. `check`
compares a file's sha256 with its source's registered one and logs a warning naming the
file, the expected and the actual digest when they differ. `ALIGNMENT_DATA_CHECK` says what
a difference does: `warn` (default) logs it, `strict` refuses the file (`ModifiedDataError`),
`off` skips the check (nothing hashed). Set `ALIGNMENT_ALLOW_MODIFIED_DATA=1` for data
modified on purpose: the difference is then logged at INFO only, in every mode.

Hashing is done once per file version: digests are cached by (path, size, mtime) in a small
JSON file (`ALIGNMENT_DIGEST_CACHE`, default `~/.cache/alignment/data_digests.json`) and in
memory, so later runs only stat the files.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

from alignment.data import download as download_lib
from alignment.files import atomic

log = logging.getLogger(__name__)

ALLOW_ENV = "ALIGNMENT_ALLOW_MODIFIED_DATA"
CACHE_ENV = "ALIGNMENT_DIGEST_CACHE"
MODE_ENV = "ALIGNMENT_DATA_CHECK"
MODES = ("warn", "strict", "off")


class ModifiedDataError(ValueError):
  """A data file differs from its registered sha256 under ALIGNMENT_DATA_CHECK=strict."""

# {resolved path: (size, mtime_ns, sha256)} of this process; the JSON cache holds the same.
_MEMO: dict[str, tuple[int, int, str]] = {}
_WARNED: set[tuple[str, str]] = set()


def cache_path() -> pathlib.Path:
  return pathlib.Path(os.environ.get(CACHE_ENV, "~/.cache/alignment/data_digests.json")
                      ).expanduser()


def _read_cache(path: pathlib.Path) -> dict[str, list]:
  try:
    cache = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return {}  # absent or damaged: digests are recomputed
  return cache if isinstance(cache, dict) else {}


def sha256(path: str | os.PathLike) -> str:
  """The file's sha256, hashed only when its (size, mtime) is not cached yet."""
  key = os.path.realpath(path)
  stat = os.stat(key)
  version = (stat.st_size, stat.st_mtime_ns)
  memo = _MEMO.get(key)
  if memo is not None and memo[:2] == version:
    return memo[2]
  store = cache_path()
  cache = _read_cache(store)
  cached = cache.get(key)
  if isinstance(cached, list) and len(cached) == 3 and tuple(cached[:2]) == version:
    digest = str(cached[2])
  else:
    digest = download_lib.sha256_file(key)
    # Files gone since (temporary data directories) are dropped, so the cache stays small.
    cache = {k: v for k, v in cache.items() if os.path.exists(k)}
    cache[key] = [*version, digest]
    try:
      atomic.write_json(store, cache, indent=None)
    except OSError as error:  # a read-only home: hash again next time, nothing worse
      log.debug("cannot write the digest cache %s: %s", store, error)
  _MEMO[key] = (*version, digest)
  return digest


def allowed_modified() -> bool:
  return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def mode() -> str:
  """ALIGNMENT_DATA_CHECK: 'warn' (unset or empty), 'strict' or 'off'."""
  value = os.environ.get(MODE_ENV, "").strip().lower() or "warn"
  if value not in MODES:
    raise ValueError(f"${MODE_ENV}={os.environ[MODE_ENV]!r}: must be one of "
                     f"{', '.join(MODES)}")
  return value


def check(name: str, path: pathlib.Path, expected: str) -> bool:
  """Whether `path` (source `name`) has its registered sha256. When it does not: under
  ALIGNMENT_DATA_CHECK=strict raises ModifiedDataError naming the file and both digests,
  else warns (once per file version and process); ALIGNMENT_ALLOW_MODIFIED_DATA=1 turns
  either into an INFO line. ALIGNMENT_DATA_CHECK=off returns True without hashing."""
  current = mode()
  if current == "off":
    return True
  actual = sha256(path)
  if actual == expected:
    return True
  if current == "strict" and not allowed_modified():
    raise ModifiedDataError(
        f"data source {name!r}: {path} was modified: sha256 {actual}, registered {expected}; "
        f"refused because ${MODE_ENV}=strict (restore the published file, or set "
        f"{ALLOW_ENV}=1 if this copy is edited on purpose)")
  if (str(path), actual) not in _WARNED:
    _WARNED.add((str(path), actual))
    level = logging.INFO if allowed_modified() else logging.WARNING
    log.log(level, "data source %r: %s was modified: sha256 %s, registered %s; results will "
            "not be comparable with runs on the published file (set %s=1 if this is on "
            "purpose)", name, path, actual, expected, ALLOW_ENV)
  return False
