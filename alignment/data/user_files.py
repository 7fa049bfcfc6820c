"""Data files a user brings: any path given where a source name goes.

A source is read as a file when its name contains '/' or ends in a known extension (.json,
.jsonl, .csv, .parquet, each optionally .gz except Parquet). The format is detected from the
columns of the first row, after an optional column mapping ("goal:prompt,target:completion"
renames `goal` to `prompt` and `target` to `completion`):

  instruction, output [, input]        alpaca             -> InstructionExample
  prompt, completion [, input]         prompt_completion  -> InstructionExample
  messages (a list of {role, content})  messages           -> InstructionExample
  prompt, chosen, rejected [, margin]  preference         -> PreferencePair
  chosen, rejected (HH transcripts)    hh                 -> PreferencePair (prompt split off)
  prompt [, label, category, id]       eval               -> EvalPrompt

Records carry the file's stem as their source (`/x/probes.csv` -> "probes"), which is also
the set's name in an evaluation report. Errors are `DataError`s naming file, line and field,
as for the built-in sources (for Parquet the "line" is the 1-based row).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

from alignment.data import readers
from alignment.data.readers import DataError, require
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair
from alignment.data.transcripts import split_transcripts

try:  # optional: Parquet files are read only where pyarrow is installed
  import pyarrow.parquet as _parquet
except ImportError:  # pragma: no cover - depends on the environment
  _parquet = None

EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
_COMPRESSIBLE = (".json", ".jsonl", ".csv")

# format -> (columns that identify it, record type); checked in this order.
FORMATS: dict[str, tuple[tuple[str, ...], type]] = {
    "preference": (("prompt", "chosen", "rejected"), PreferencePair),
    "hh": (("chosen", "rejected"), PreferencePair),
    "messages": (("messages",), InstructionExample),
    "alpaca": (("instruction", "output"), InstructionExample),
    "prompt_completion": (("prompt", "completion"), InstructionExample),
    "eval": (("prompt",), EvalPrompt),
}
_EXPECTED = ("instruction/output[/input] (alpaca), prompt/completion, messages (chat turns), "
             "prompt/chosen/rejected (preference pairs), chosen/rejected (HH transcripts), "
             "prompt[/label/category/id] "
             "(evaluation prompts)")
ROLES = ("system", "user", "assistant")
LABELS = ("safe", "unsafe")


@dataclasses.dataclass(frozen=True)
class UserFile:
  """Records read from a user's file, the detected format and counts of what was seen."""

  name: str  # the file's stem: the records' source
  path: pathlib.Path
  format: str
  records: list[Any]
  counts: dict[str, int]


def is_path(name: str) -> bool:
  """Whether a source name is a file path: it contains '/' or ends in a known extension."""
  lower = name.lower()
  return "/" in name or lower.endswith(EXTENSIONS) or lower.endswith(
      tuple(e + ".gz" for e in _COMPRESSIBLE))


def _suffix(path: pathlib.Path) -> str:
  """The data extension, past a trailing .gz ('' when there is none)."""
  name = path.name.lower()
  if name.endswith(".gz"):
    name = name[:-3]
  return pathlib.PurePath(name).suffix


def source_name(name: str) -> str:
  """The name records and reports use: a path's stem (extensions dropped), else the name."""
  if not is_path(name):
    return name
  base = pathlib.PurePath(name).name
  if base.lower().endswith(".gz"):
    base = base[:-3]
  stem = pathlib.PurePath(base).stem
  return stem or base


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
  """{file column: our column} from "a:b,c:d" (or a mapping, passed through)."""
  if not spec:
    return {}
  if isinstance(spec, Mapping):
    return dict(spec)
  out: dict[str, str] = {}
  for item in spec.split(","):
    item = item.strip()
    if not item:
      continue
    old, sep, new = item.partition(":")
    old, new = old.strip(), new.strip()
    if not sep or not old or not new:
      raise ValueError(f"column mapping {spec!r}: {item!r} is not 'file_column:our_column'")
    if old in out:
      raise ValueError(f"column mapping {spec!r}: column {old!r} is mapped twice")
    out[old] = new
  return out


def _rename(row: Any, mapping: dict[str, str]) -> Any:
  if not mapping or not isinstance(row, dict):
    return row
  return {mapping.get(k, k): v for k, v in row.items()}


def _json_rows(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
  """A .json file holds a JSON array, or JSON lines (as many exports named .json do)."""
  if readers.read_text(path).lstrip().startswith("["):
    return readers.read_json_array(path)
  return readers.read_jsonl(path)


def _parquet_rows(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
  if _parquet is None:
    raise DataError(path, "reading Parquet needs pyarrow, which is not installed; convert the "
                    "file to JSONL or CSV")
  if not path.is_file():
    raise DataError(path, "file not found")
  try:
    rows = _parquet.read_table(path).to_pylist()
  except Exception as e:  # pyarrow raises several types for a bad file
    raise DataError(path, f"not a readable Parquet file ({e})") from e
  if not rows:
    raise DataError(path, "Parquet file has no rows")
  yield from enumerate(rows, start=1)


def rows(path: str | pathlib.Path) -> Iterator[tuple[int, Any]]:
  """(line, row) for every row of a user's file, by its extension."""
  path = pathlib.Path(path).expanduser()
  suffix = _suffix(path)
  if suffix == ".jsonl":
    return readers.read_jsonl(path)
  if suffix == ".json":
    return _json_rows(path)
  if suffix == ".csv":
    return readers.read_csv(path, ())
  if suffix == ".parquet":
    return _parquet_rows(path)
  raise DataError(path, f"unknown file type {suffix or '(no extension)'!r}; expected one of "
                  f"{', '.join(EXTENSIONS)} (JSON and CSV optionally gzipped)")


def detect(columns: Any, path: str | pathlib.Path, line: int | None,
           mapping: dict[str, str] | None = None) -> str:
  """The format whose identifying columns are all present; a DataError listing them if none."""
  if not isinstance(columns, dict):
    raise DataError(path, f"expected a JSON object per row, got {type(columns).__name__}",
                    line=line)
  for name, (needed, _) in FORMATS.items():
    if all(c in columns for c in needed):
      return name
  mapped = f" after the column mapping {mapping}" if mapping else ""
  raise DataError(path, f"unknown format: columns {sorted(columns)}{mapped}; expected "
                  f"{_EXPECTED}. Rename columns with a mapping such as 'goal:prompt'",
                  line=line)


def _optional_text(row: dict, field: str, path: pathlib.Path, line: int) -> str:
  """A string field that may be absent or null (CSV leaves it empty)."""
  value = row.get(field)
  if value is None:
    return ""
  if not isinstance(value, str):
    raise DataError(path, f"expected str, got {type(value).__name__}", line=line, field=field)
  return value


def _instruction(row, path, line, name, counts) -> InstructionExample:
  instruction = require(row, "instruction", path, line, nonempty=True)
  output = require(row, "output", path, line)
  counts["empty_output"] += not output.strip()
  return InstructionExample(instruction=instruction, output=output,
                            input=_optional_text(row, "input", path, line), source=name)


def _prompt_completion(row, path, line, name, counts) -> InstructionExample:
  prompt = require(row, "prompt", path, line, nonempty=True)
  completion = require(row, "completion", path, line)
  counts["empty_output"] += not completion.strip()
  return InstructionExample(instruction=prompt, output=completion,
                            input=_optional_text(row, "input", path, line), source=name)


def _turns(row, path, line) -> list[tuple[str, str]]:
  value = row.get("messages")
  if isinstance(value, str):  # a CSV cell holding the JSON list
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      raise DataError(path, f"not a JSON list of turns ({e.msg})", line=line,
                      field="messages") from e
  if not isinstance(value, list) or not value:
    raise DataError(path, "expected a non-empty list of {role, content} turns", line=line,
                    field="messages")
  turns = []
  for i, turn in enumerate(value):
    where = f"messages[{i}]"
    if not isinstance(turn, dict):
      raise DataError(path, "expected an object {role, content}", line=line, field=where)
    role, content = turn.get("role"), turn.get("content")
    if role not in ROLES:
      raise DataError(path, f"role {role!r} is not one of {', '.join(ROLES)}", line=line,
                      field=f"{where}.role")
    if not isinstance(content, str):
      raise DataError(path, "missing or not a string", line=line, field=f"{where}.content")
    turns.append((role, content))
  return turns


def _messages(row, path, line, name, counts) -> InstructionExample:
  """The last assistant turn is the output; what comes before it is the instruction.

  One user turn (after any system turns) becomes the instruction as it is; a longer history
  is written out as "User: ...\\n\\nAssistant: ..." lines ending with the last user turn. System
  turns open the instruction. Turns after the last assistant turn have no target and are
  dropped (counted).
  """
  turns = _turns(row, path, line)
  last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=-1)
  if last < 0:
    raise DataError(path, "no assistant turn (the output to train on)", line=line,
                    field="messages")
  history = [(r, c) for r, c in turns[:last] if r != "system"]
  system = "\n\n".join(c for r, c in turns[:last] if r == "system" and c.strip())
  if not history or history[-1][0] != "user":
    raise DataError(path, f"the assistant turn messages[{last}] answers no user turn",
                    line=line, field="messages")
  if len(history) == 1:
    instruction = history[0][1]
  else:
    instruction = "\n\n".join(f"{r.capitalize()}: {c}" for r, c in history)
    counts["multi_turn"] += 1
  if system:
    instruction = f"{system}\n\n{instruction}"
    counts["with_system"] += 1
  if not instruction.strip():
    raise DataError(path, "the prompt turns are empty", line=line, field="messages")
  counts["dropped_trailing_turns"] += len(turns) - last - 1
  output = turns[last][1]
  counts["empty_output"] += not output.strip()
  return InstructionExample(instruction=instruction, output=output, source=name)


def _margin(row, path, line) -> float | None:
  value = row.get("margin")
  if value is None or value == "":
    return None
  if isinstance(value, bool):
    raise DataError(path, "expected a number, got bool", line=line, field="margin")
  try:
    return float(value)
  except (TypeError, ValueError):
    raise DataError(path, f"expected a number, got {value!r}", line=line,
                    field="margin") from None


def _preference(row, path, line, name, counts) -> PreferencePair:
  prompt = require(row, "prompt", path, line, nonempty=True)
  chosen = require(row, "chosen", path, line, nonempty=True)
  rejected = require(row, "rejected", path, line, nonempty=True)
  counts["identical_replies"] += chosen == rejected
  return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, source=name,
                        margin=_margin(row, path, line))


def _hh(row, path, line, name, counts) -> PreferencePair:
  """Two whole HH transcripts: the prompt is what they share up to an Assistant turn."""
  chosen = require(row, "chosen", path, line, nonempty=True)
  rejected = require(row, "rejected", path, line, nonempty=True)
  try:
    prompt, c, r, clean = split_transcripts(chosen, rejected)
  except ValueError as e:
    raise DataError(path, f"{e}; rows with chosen/rejected but no prompt column are read as "
                    "HH transcripts (add or map a prompt column otherwise)", line=line,
                    field="chosen/rejected") from e
  counts["prefix_not_last_turn"] += not clean
  counts["identical_replies"] += c == r
  return PreferencePair(prompt=prompt, chosen=c, rejected=r, source=name,
                        margin=_margin(row, path, line))


def _eval(row, path, line, name, counts) -> EvalPrompt:
  prompt = require(row, "prompt", path, line, nonempty=True)
  label = _optional_text(row, "label", path, line).strip().lower() or None
  if label is not None and label not in LABELS:
    raise DataError(path, f"expected 'safe', 'unsafe' or empty, got {row['label']!r}",
                    line=line, field="label")
  counts[label or "unlabelled"] += 1
  category = _optional_text(row, "category", path, line).strip()
  ident = row.get("id")
  if ident is None or ident == "":
    ident = f"{name}-{counts['prompts']}"
  elif isinstance(ident, (str, int)) and not isinstance(ident, bool):
    ident = str(ident)
  else:
    raise DataError(path, f"expected a string or integer, got {type(ident).__name__}",
                    line=line, field="id")
  counts["prompts"] += 1
  return EvalPrompt(prompt=prompt, source=name, id=ident, label=label,
                    tags=(category,) if category else ())


_BUILD = {"alpaca": _instruction, "prompt_completion": _prompt_completion,
          "messages": _messages, "preference": _preference, "hh": _hh, "eval": _eval}
_COUNT_KEYS = {"alpaca": ("empty_output",), "prompt_completion": ("empty_output",),
               "messages": ("multi_turn", "with_system", "dropped_trailing_turns",
                            "empty_output"),
               "preference": ("identical_replies",),
               "hh": ("prefix_not_last_turn", "identical_replies"),
               "eval": ("prompts", "safe", "unsafe", "unlabelled")}


def read(path: str | pathlib.Path, columns: str | Mapping[str, str] | None = None
         ) -> UserFile:
  """Every row of a user's file as typed records, in file order; nothing is skipped."""
  mapping = parse_columns(columns)
  path = pathlib.Path(path).expanduser()
  name = source_name(str(path))
  fmt, build = "", None
  counts: dict[str, int] = {}
  records: list[Any] = []
  seen_ids: dict[str, int] = {}
  for line, row in rows(path):
    row = _rename(row, mapping)
    if build is None:
      fmt = detect(row, path, line, mapping)
      build = _BUILD[fmt]
      counts = dict.fromkeys(_COUNT_KEYS[fmt], 0)
    elif not isinstance(row, dict):
      raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line=line)
    record = build(row, path, line, name, counts)
    if isinstance(record, EvalPrompt):
      if record.id in seen_ids:
        raise DataError(path, f"id {record.id!r} repeats the row on line {seen_ids[record.id]}",
                        line=line, field="id")
      seen_ids[record.id] = line
    records.append(record)
  counts = {"rows": len(records), **counts}
  return UserFile(name, path, fmt, records, counts)


def formats_of(kind: type) -> list[str]:
  """The formats whose rows become records of type `kind`."""
  return [name for name, (_, t) in FORMATS.items() if t is kind]
