"""How a job's config section becomes a library dataclass, and how lists are written.

The library's frozen dataclasses are the schema: `from_section(cls, section)` takes every
field of `cls` that the section has, by name, so a section needs no field-by-field
translation and a renamed field fails loudly (a required field the section lacks is an error
naming it). Lists of names are tuples in the config files; a command line gives them as a
tuple (`--config.lora.targets="('q','v')"`) or comma-separated (`--config.lora.targets=q,v`,
which ml_collections reads as ('q,v',)); `names` reads both, and strings too. `section(cls)`
goes the other way: a config section written from the dataclass's fields and defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import ml_collections

T = TypeVar("T")


def names(value: str | Sequence[str], sep: str = ",") -> tuple[str, ...]:
  """The non-empty, stripped items of a `sep`-joined string or of a sequence of strings.

  Items of a sequence are split too: ml_collections reads `--config.x=q,v` for a tuple
  field as the one-item tuple ('q,v',), which means ('q', 'v').
  """
  items = [value] if isinstance(value, str) else list(value)
  out = []
  for item in items:
    if not isinstance(item, str):
      raise TypeError(f"expected strings, got {type(item).__name__} {item!r} in {value!r}")
    out += [s.strip() for s in item.split(sep) if s.strip()]
  return tuple(out)


def from_section(cls: type[T], section: Mapping[str, Any], name: str = "", **given: Any) -> T:
  """`cls(**fields)`: each dataclass field from `given`, else from `section` (same name);
  fields in neither keep their defaults. Keys of the section that `cls` lacks are left for
  the job (a section may hold job-only keys). `name` (e.g. "config.lora") prefixes errors."""
  kwargs = {}
  for field in dataclasses.fields(cls):
    if not field.init:
      continue
    if field.name in given:
      kwargs[field.name] = given[field.name]
    elif field.name in section:
      value = section[field.name]
      kwargs[field.name] = tuple(value) if isinstance(value, list) else value
  unknown = set(given) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
  try:
    return cls(**kwargs)
  except TypeError as e:  # a required field missing from the section
    raise ValueError(f"{name or cls.__name__}: {e}") from None


def section(cls: type, extra: Mapping[str, Any] | None = None, **values: Any
            ) -> ml_collections.ConfigDict:
  """The config section of dataclass `cls`: every init field under its own name, with its
  default unless `values` gives it, then the job-only keys of `extra`. Written this way, a
  section and the dataclass that `from_section` builds from it share one set of names and
  defaults (a field added to the library appears in every config, typed)."""
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  unknown = set(values) - set(fields)
  if unknown:
    raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
  clash = set(extra or {}) & set(fields)
  if clash:
    raise TypeError(f"extra key(s) {sorted(clash)} are fields of {cls.__name__}: give them "
                    "as values")
  out = {}
  for name, field in fields.items():
    if name in values:
      out[name] = values[name]
    elif field.default is not dataclasses.MISSING:
      out[name] = field.default
    elif field.default_factory is not dataclasses.MISSING:
      out[name] = field.default_factory()
    else:
      raise TypeError(f"{cls.__name__}.{name} has no default: give it as a value")
    if dataclasses.is_dataclass(out[name]):
      raise TypeError(f"{cls.__name__}.{name} is a dataclass; write it as its own section")
  return ml_collections.ConfigDict({**out, **(extra or {})})
