"""The answer record every evaluation reads and writes: one prompt, one answer, its scores.

Sampling writes a run's answers as JSON lines of `AnswerRecord`; scorers (refusal classifier,
later reward models) add entries to `scores`; reports read the scored file back. Keeping the
record this small lets any generator (ours, or another codebase's outputs) be evaluated alike.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable

from alignment.data.readers import DataError, read_jsonl, require
from alignment.files import atomic

LABELS = ("safe", "unsafe")
# What an evaluation directory holds: one AnswerRecord per line, and the summary written last
# (its presence marks a finished evaluation).
ANSWERS_FILE = "answers.jsonl"
RESULT_FILE = "result.json"


@dataclasses.dataclass(frozen=True)
class AnswerRecord:
  """A model's answer to one evaluation prompt.

  `set` names the evaluation set (e.g. "xstest", "malicious_instructions"); `id` is unique in
  it. `label` is "safe"/"unsafe" where the set says so, else None. `scores` maps a scorer's
  name to its value for this answer (None where that scorer does not apply). `attack` names
  the red-teaming vector (`alignment.evaluation.attacks`) that rewrote `prompt`, None for the
  untransformed prompt; (set, id, attack) is unique in a run, so an attacked answer pairs
  with its baseline by (set, id).
  """

  set: str
  id: str
  prompt: str
  answer: str
  label: str | None = None
  scores: dict[str, float | None] = dataclasses.field(default_factory=dict)
  attack: str | None = None

  def __post_init__(self):
    if self.label is not None and self.label not in LABELS:
      raise ValueError(f"record {self.set}/{self.id}: label must be one of {LABELS} or None, "
                       f"got {self.label!r}")

  def with_scores(self, **scores: float | None) -> AnswerRecord:
    """A copy with `scores` merged in (new values win)."""
    return dataclasses.replace(self, scores={**self.scores, **scores})

  def to_json(self) -> dict:
    """The record as a JSON object; `attack` only when set, so unattacked runs read as before."""
    out = dataclasses.asdict(self)
    if out["attack"] is None:
      del out["attack"]
    return out


def _record_from_json(row: object, path: pathlib.Path, line: int) -> AnswerRecord:
  for field in ("set", "id"):
    require(row, field, path, line, str, nonempty=True)
  for field in ("prompt", "answer"):
    require(row, field, path, line, str)
  label = row.get("label")
  if label is not None and label not in LABELS:
    raise DataError(path, f"expected one of {LABELS} or null, got {label!r}", line=line,
                    field="label")
  attack = row.get("attack")
  if attack is not None and (not isinstance(attack, str) or not attack):
    raise DataError(path, f"expected a non-empty string or null, got {attack!r}", line=line,
                    field="attack")
  scores = row.get("scores", {})
  if not isinstance(scores, dict):
    raise DataError(path, f"expected an object, got {type(scores).__name__}", line=line,
                    field="scores")
  for name, value in scores.items():
    # bool is an int subclass; a true/false score is almost surely a writer's mistake.
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
      raise DataError(path, f"expected a number or null, got {value!r}", line=line,
                      field=f"scores.{name}")
  unknown = set(row) - {f.name for f in dataclasses.fields(AnswerRecord)}
  if unknown:
    raise DataError(path, f"unknown field(s) {', '.join(sorted(unknown))}", line=line,
                    field=sorted(unknown)[0])
  return AnswerRecord(set=row["set"], id=row["id"], prompt=row["prompt"], answer=row["answer"],
                      label=label,
                      scores={k: None if v is None else float(v) for k, v in scores.items()},
                      attack=attack)


def read_answers(path: str | pathlib.Path) -> list[AnswerRecord]:
  """Records from a JSONL file; a DataError naming file, line and field on any bad line."""
  path = pathlib.Path(path)
  records, seen = [], {}
  for line, row in read_jsonl(path):
    record = _record_from_json(row, path, line)
    key = (record.set, record.id, record.attack)
    if key in seen:
      under = f" under attack {record.attack!r}" if record.attack else ""
      raise DataError(path, f"duplicate id {record.id!r} in set {record.set!r}{under} (first on "
                      f"line {seen[key]})", line=line, field="id")
    seen[key] = line
    records.append(record)
  return records


def write_answers(path: str | pathlib.Path, records: Iterable[AnswerRecord]) -> pathlib.Path:
  """Write records as JSON lines (UTF-8, one object per line), atomically (an interrupted
  write leaves the previous file); returns the path."""
  return atomic.write_jsonl(path, (record.to_json() for record in records))
