"""Fetch a source's published file once into a cache, refusing anything whose sha256 differs.

The download goes to a temporary file beside its destination and is renamed into place only
after its sha256 matches, so a cache never holds a partial or wrong file. `base_url` (or
$ALIGNMENT_DATA_MIRROR) points at a mirror laid out like the data directory (the tests serve
../shared/data on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from absl import logging

from alignment.files import atomic

if TYPE_CHECKING:
  from alignment.data.sources import Source

CACHE_DIR_ENV = "ALIGNMENT_CACHE_DIR"
# Base URL of a mirror laid out like the data directory, used instead of the published URLs.
MIRROR_ENV = "ALIGNMENT_DATA_MIRROR"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
  """A download failed or its content did not match the expected sha256."""


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(CACHE_DIR_ENV, "~/.cache/alignment/data")).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def remote(source: Source, base_url: str | None = None) -> tuple[str, str, str]:
  """(url, relative cache path, expected sha256) of the file to fetch for `source`; the
  mirror is `base_url`, else $ALIGNMENT_DATA_MIRROR, else none (the published URL)."""
  base_url = base_url or os.environ.get(MIRROR_ENV) or None
  if base_url:  # a mirror of the data directory: same layout, same files
    return base_url.rstrip("/") + "/" + source.path, source.path, source.sha256
  return source.url, source.url_path or source.path, source.url_sha256 or source.sha256


def fetch(source: Source, cache_dir: str | os.PathLike | None = None, *,
          base_url: str | None = None, timeout: float = 60.0) -> pathlib.Path:
  """Path of the verified cached copy of `source`, downloading it if not cached yet."""
  url, rel, expected = remote(source, base_url)
  dest = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  dest = dest / rel
  if dest.is_file():
    if sha256_file(dest) == expected:
      return dest
    logging.warning("%s: cached file has the wrong sha256; downloading it again", dest)
  logging.info("downloading %s from %s to %s", source.name, url, dest)
  digest = hashlib.sha256()
  # atomic.writing keeps the file only if the block ends cleanly: a failed or mismatched
  # download leaves nothing at `dest`.
  with atomic.writing(dest, "wb") as out:
    try:
      with urllib.request.urlopen(url, timeout=timeout) as response:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
          digest.update(chunk)
          out.write(chunk)
    except (urllib.error.URLError, OSError) as e:
      raise DownloadError(f"source {source.name!r}: downloading {url} failed: {e}") from e
    got = digest.hexdigest()
    if got != expected:
      raise DownloadError(f"source {source.name!r}: {url} has sha256 {got}, expected {expected};"
                          " the file was not kept")
  return dest
