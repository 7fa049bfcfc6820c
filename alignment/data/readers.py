"""File readers that fail loudly: every error names the file, the line and the field.

Data files come in four shapes (a JSON document, JSON lines, CSV, and gzip of any of them). The
readers here only parse and locate; turning rows into typed records is the job of `sources.py`.
Nothing is skipped quietly: a blank line, a missing field or an empty file raises `DataError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
  """A data file is malformed; the message says where (file, line, field) and what."""

  def __init__(self, path: str | pathlib.Path, problem: str, *, line: int | None = None,
               field: str | None = None):
    self.path = str(path)
    self.line = line
    self.field = field
    self.problem = problem
    where = self.path + (f":{line}" if line is not None else "")
    what = f"field {field!r}: " if field is not None else ""
    super().__init__(f"{where}: {what}{problem}")


def read_text(path: str | pathlib.Path) -> str:
  """The file's text, decompressed when it starts with the gzip magic (whatever its suffix)."""
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    raise DataError(path, "file not found") from None
  if raw[:2] == _GZIP_MAGIC:
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise DataError(path, f"corrupt gzip data ({e})") from e
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(path, f"not valid UTF-8 ({e.reason})", line=line) from e
  if not text.strip():
    raise DataError(path, "file is empty")
  return text


def _json_error(path: pathlib.Path, e: json.JSONDecodeError, line_offset: int = 0) -> DataError:
  return DataError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=e.lineno + line_offset)


def read_json(path: str | pathlib.Path) -> Any:
  """One JSON document."""
  path = pathlib.Path(path)
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise _json_error(path, e) from e


def read_json_array(path: str | pathlib.Path) -> Iterator[tuple[int, Any]]:
  """(line, element) for each element of a top-level JSON array.

  Decoding element by element (rather than `json.loads` of the whole file) is what lets a
  missing field deep in a 52k-row file be reported with the line its record starts on.
  """
  path = pathlib.Path(path)
  text = read_text(path)
  decoder = json.JSONDecoder()
  pos, line, n = 0, 1, len(text)

  def skip_ws(p: int) -> int:
    while p < n and text[p] in " \t\r\n":
      p += 1
    return p

  def line_at(p: int) -> int:
    nonlocal pos, line
    line += text.count("\n", pos, p)
    pos = p
    return line

  p = skip_ws(0)
  if text[p] != "[":
    raise DataError(path, "expected a JSON array ('[') at the top level", line=line_at(p))
  p = skip_ws(p + 1)
  if p < n and text[p] == "]":
    raise DataError(path, "JSON array is empty", line=line_at(p))
  while True:
    start = line_at(p)
    try:
      value, p = decoder.raw_decode(text, p)
    except json.JSONDecodeError as e:
      raise DataError(path, f"malformed JSON: {e.msg}", line=line_at(e.pos)) from e
    yield start, value
    p = skip_ws(p)
    if p < n and text[p] == ",":
      p = skip_ws(p + 1)
      continue
    if p < n and text[p] == "]":
      if skip_ws(p + 1) != n:
        raise DataError(path, "unexpected text after the JSON array", line=line_at(skip_ws(p + 1)))
      return
    raise DataError(path, "expected ',' or ']' between array elements", line=line_at(min(p, n)))


def read_jsonl(path: str | pathlib.Path) -> Iterator[tuple[int, Any]]:
  """(line, value) for each line of a JSON-lines file; blank lines are errors, not skipped."""
  path = pathlib.Path(path)
  text = read_text(path)
  lines = text.split("\n")
  if lines and lines[-1] == "":  # the newline that ends the last line
    lines.pop()
  for i, line_text in enumerate(lines, start=1):
    if not line_text.strip():
      raise DataError(path, "blank line in a JSON-lines file", line=i)
    try:
      yield i, json.loads(line_text)
    except json.JSONDecodeError as e:
      raise DataError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=i) from e


def read_csv(path: str | pathlib.Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
  """(line, row) for each CSV row, keyed by header; `line` is where the row starts.

  A quoted field may span lines (model completions do), so the start line is tracked from the
  reader's position rather than counted from row numbers.
  """
  path = pathlib.Path(path)
  text = read_text(path)
  reader = csv.reader(io.StringIO(text, newline=""), strict=True)
  try:
    header = next(reader)
  except csv.Error as e:
    raise DataError(path, f"malformed CSV header ({e})", line=1) from e
  missing = [c for c in required if c not in header]
  if missing:
    raise DataError(path, f"CSV header lacks column(s) {', '.join(missing)}; found {header}",
                    line=1, field=missing[0])
  start = reader.line_num + 1
  rows = 0
  while True:
    try:
      row = next(reader)
    except StopIteration:
      break
    except csv.Error as e:
      raise DataError(path, f"malformed CSV ({e})", line=start) from e
    if not row:
      raise DataError(path, "blank line in a CSV file", line=start)
    if len(row) != len(header):
      raise DataError(path, f"row has {len(row)} fields, header has {len(header)}", line=start)
    yield start, dict(zip(header, row))
    rows += 1
    start = reader.line_num + 1
  if rows == 0:
    raise DataError(path, "CSV file has a header but no rows")


def require(row: Any, field: str, path: str | pathlib.Path, line: int | None,
            kind: type | tuple[type, ...] = str, *, nonempty: bool = False) -> Any:
  """`row[field]`, checked to exist and to be of `kind`; a DataError naming both otherwise."""
  if not isinstance(row, dict):
    raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line=line)
  if field not in row:
    raise DataError(path, "missing", line=line, field=field)
  value = row[field]
  if not isinstance(value, kind):
    names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
    raise DataError(path, f"expected {names}, got {type(value).__name__}", line=line, field=field)
  if nonempty and (value == "" or (isinstance(value, str) and not value.strip())):
    raise DataError(path, "is empty", line=line, field=field)
  return value
