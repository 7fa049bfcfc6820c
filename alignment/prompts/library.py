"""Prompt templates as data: `{{placeholders}}`, few-shot examples, preambles, per-input choice.

Following the Responsible Generative AI Toolkit's advice on safety prompting, a template can
  - carry a system/safety preamble (Gemma has no system role; it opens the first user turn),
  - show few-shot examples of the wanted behaviour (each a filled-in body and its response),
  - be chosen per input from a label (a classifier's output or a data set's tag): a
    `DynamicTemplate` maps label -> template with a default for any other label.
Templates live in JSON files so they can be versioned and reviewed apart from code:

  {"templates": {
     "safe_assistant": {
        "format": "gemma_chat",              # turn format: gemma_chat | alpaca | plain
        "preamble": "You are a helpful and harmless assistant. ...",
        "body": "{{instruction}}",           # {{name}} placeholders, filled per input
        "examples": [{"values": {"instruction": "..."}, "response": "..."}],
        "sources": ["safety_instructions"]   # data the examples were written from
     }},
   "dynamic": {
     "by_tag": {"routes": {"hate": "anti_hate", "crime": "safe_assistant"},
                "default": "safe_assistant"}}}

Every error in a file names the file and the field (`templates.x.examples[0].response`).
The turn formats reuse `templates.PromptTemplate` (ALPACA, GEMMA_CHAT), so a library template
without preamble or examples formats a prompt exactly as the existing API does.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from alignment.data.readers import DataError
from alignment.prompts.templates import ALPACA, GEMMA_CHAT, PromptTemplate

# A plain format: the preamble, then the text, nothing around them (base-model prompting).
PLAIN = PromptTemplate(name="plain", prompt_input="{system}{instruction}\n\n{input}",
                       prompt_no_input="{system}{instruction}", response_split="")
FORMATS: dict[str, PromptTemplate] = {t.name: t for t in (GEMMA_CHAT, ALPACA, PLAIN)}
# Between a few-shot example's response and the next turn.
_SHOT_SEPARATOR = {"gemma_chat": "\n", "alpaca": "\n\n", "plain": "\n\n"}

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PLACEHOLDER = re.compile(r"\{\{\s*(" + _NAME + r")\s*\}\}")
_BRACES = re.compile(r"\{\{|\}\}")


class TemplateError(ValueError):
  """A template cannot be rendered (missing/unknown placeholder, malformed `{{...}}`)."""


def placeholders(text: str, where: str = "template") -> tuple[str, ...]:
  """Names of the `{{name}}` placeholders in `text`, in first-seen order.

  Raises TemplateError on `{{` or `}}` that is not part of a well-formed placeholder, so a typo
  such as `{{ article }` or `{{1x}}` fails here instead of reaching the model verbatim.
  """
  spans = [m.span() for m in _PLACEHOLDER.finditer(text)]
  for brace in _BRACES.finditer(text):
    if not any(a <= brace.start() < b for a, b in spans):
      near = text[max(0, brace.start() - 15):brace.end() + 15]
      raise TemplateError(f"{where}: malformed placeholder near {near!r} (column "
                          f"{brace.start() + 1}); placeholders look like {{{{name}}}} with "
                          f"name matching {_NAME}")
  names: list[str] = []
  for m in _PLACEHOLDER.finditer(text):
    if m.group(1) not in names:
      names.append(m.group(1))
  return tuple(names)


def render(text: str, values: Mapping[str, str], where: str = "template",
           allow_unused: bool = False) -> str:
  """`text` with each `{{name}}` replaced by `values[name]` (single pass: values are literal).

  Missing values raise TemplateError naming them; so do values the text has no placeholder for
  (usually a misspelt name) unless `allow_unused`.
  """
  names = placeholders(text, where)
  missing = [n for n in names if n not in values]
  if missing:
    raise TemplateError(f"{where}: no value for placeholder(s) "
                        f"{', '.join('{{' + n + '}}' for n in missing)} "
                        f"(given: {', '.join(sorted(values)) or 'none'})")
  unused = sorted(set(values) - set(names))
  if unused and not allow_unused:
    raise TemplateError(f"{where}: unknown placeholder(s) {', '.join(unused)}; the template "
                        f"has {', '.join(names) or 'no placeholders'}")
  for n in names:
    if not isinstance(values[n], str):
      raise TemplateError(f"{where}: value of {{{{{n}}}}} must be a string, got "
                          f"{type(values[n]).__name__}")
  return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


@dataclasses.dataclass(frozen=True)
class FewShotExample:
  """One demonstration: placeholder values for the body and the response to show."""

  values: dict[str, str]
  response: str


@dataclasses.dataclass(frozen=True)
class TextTemplate:
  """A body with placeholders, wrapped in a turn format, after an optional preamble and shots."""

  name: str
  body: str = "{{instruction}}"
  chat_format: str = "gemma_chat"  # "format" in files
  preamble: str = ""
  examples: tuple[FewShotExample, ...] = ()
  sources: tuple[str, ...] = ()  # data the preamble/examples were written from (not for eval)

  def __post_init__(self):
    if self.chat_format not in FORMATS:
      raise TemplateError(f"template {self.name!r}: unknown format {self.chat_format!r}; known: "
                          f"{', '.join(FORMATS)}")
    placeholders(self.body, f"template {self.name!r} body")
    for i, ex in enumerate(self.examples):  # every example must fill the body exactly
      render(self.body, ex.values, f"template {self.name!r} examples[{i}]")

  @property
  def placeholders(self) -> tuple[str, ...]:
    return placeholders(self.body, f"template {self.name!r} body")

  @property
  def turns(self) -> PromptTemplate:
    return FORMATS[self.chat_format]

  def prompt(self, values: Mapping[str, str] | str, label: str | None = None) -> str:
    """The model input for one input (a str fills the template's only placeholder).

    `label` is accepted (and ignored) so static and dynamic templates are used alike.
    """
    del label
    values = self._values(values)
    turns = self.turns
    text = render(self.body, values, f"template {self.name!r}")
    preamble = self.preamble
    out = []
    for ex in self.examples:
      shot = render(self.body, ex.values, f"template {self.name!r}")
      out.append(turns.format(shot, system=preamble) + ex.response + turns.response_suffix
                 + _SHOT_SEPARATOR[self.chat_format])
      preamble = ""  # the preamble opens the first turn only
    out.append(turns.format(text, system=preamble))
    return "".join(out)

  def format(self, instruction: str) -> str:
    """`prompt(instruction)`: lets a one-placeholder template stand in for a PromptTemplate
    wherever only `.format(prompt)` is called (e.g. `Sampler(..., template=...)`)."""
    return self.prompt(instruction)

  def split_response(self, text: str) -> str:
    """The answer in a transcript generated from `prompt(...)` (after the last response mark)."""
    split = self.turns.response_split
    return text.rsplit(split, 1)[-1].strip() if split else text

  def _values(self, values: Mapping[str, str] | str) -> Mapping[str, str]:
    if isinstance(values, str):
      names = self.placeholders
      if len(names) != 1:
        raise TemplateError(f"template {self.name!r} has placeholders {', '.join(names) or '–'}; "
                            "pass a mapping of values, not one string")
      return {names[0]: values}
    return values


@dataclasses.dataclass(frozen=True)
class DynamicTemplate:
  """Chooses a template per input from a label (classifier output, data set tag)."""

  name: str
  routes: dict[str, TextTemplate]
  default: TextTemplate

  def select(self, label: str | None) -> TextTemplate:
    """The template for `label`; the default for None or an unrouted label."""
    return self.routes.get(label, self.default) if label is not None else self.default

  def select_from(self, labels: Sequence[str]) -> TextTemplate:
    """The template of the first label that has a route (e.g. an input's tags), else default."""
    for label in labels:
      if label in self.routes:
        return self.routes[label]
    return self.default

  def prompt(self, values: Mapping[str, str] | str, label: str | None = None) -> str:
    return self.select(label).prompt(values)

  @property
  def sources(self) -> tuple[str, ...]:
    out: list[str] = []
    for t in (self.default, *self.routes.values()):
      out += [s for s in t.sources if s not in out]
    return tuple(out)

  @property
  def templates(self) -> tuple[TextTemplate, ...]:
    seen: dict[str, TextTemplate] = {self.default.name: self.default}
    for t in self.routes.values():
      seen.setdefault(t.name, t)
    return tuple(seen.values())


Template = TextTemplate | DynamicTemplate


@dataclasses.dataclass(frozen=True)
class TemplateLibrary:
  """Named static and dynamic templates read from one file."""

  templates: dict[str, TextTemplate]
  dynamic: dict[str, DynamicTemplate]
  source: str = "<memory>"

  def get(self, name: str) -> Template:
    if name in self.templates:
      return self.templates[name]
    if name in self.dynamic:
      return self.dynamic[name]
    known = ", ".join(sorted([*self.templates, *self.dynamic]))
    raise KeyError(f"{self.source}: no template {name!r}; known: {known}")

  def names(self) -> list[str]:
    return [*self.templates, *self.dynamic]


# ---------------------------------------------------------------------------------------------
# Reading a library file.

_TEMPLATE_FIELDS = {"format", "preamble", "body", "examples", "sources", "description"}
_DYNAMIC_FIELDS = {"routes", "default", "description"}


def _expect(value: Any, kind: type | tuple[type, ...], path: pathlib.Path, field: str) -> Any:
  if not isinstance(value, kind):
    names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise DataError(path, f"expected {_JSON_NAMES.get(names, names)}, got "
                    f"{_JSON_NAMES.get(type(value).__name__, type(value).__name__)}", field=field)
  return value


_JSON_NAMES = {"dict": "an object", "list": "a list", "str": "a string", "NoneType": "null",
               "int": "a number", "float": "a number", "bool": "true/false"}


def _unknown(raw: dict, allowed: set[str], path: pathlib.Path, field: str) -> None:
  extra = sorted(set(raw) - allowed)
  if extra:
    raise DataError(path, f"unknown field(s) {', '.join(extra)}; allowed: "
                    f"{', '.join(sorted(allowed))}", field=f"{field}.{extra[0]}")


def _template_from_json(name: str, raw: Any, path: pathlib.Path) -> TextTemplate:
  field = f"templates.{name}"
  _expect(raw, dict, path, field)
  _unknown(raw, _TEMPLATE_FIELDS, path, field)
  for key in ("format", "preamble", "body"):
    if key in raw:
      _expect(raw[key], str, path, f"{field}.{key}")
  fmt = raw.get("format", "gemma_chat")
  if fmt not in FORMATS:
    raise DataError(path, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}",
                    field=f"{field}.format")
  body = raw.get("body", "{{instruction}}")
  try:
    names = placeholders(body, "body")
  except TemplateError as e:
    raise DataError(path, str(e), field=f"{field}.body") from None
  if not names:
    raise DataError(path, "has no {{placeholder}}: every input would get the same prompt",
                    field=f"{field}.body")
  try:
    placeholders(raw.get("preamble", ""), "preamble")
  except TemplateError as e:
    raise DataError(path, str(e), field=f"{field}.preamble") from None
  if placeholders(raw.get("preamble", "")):
    raise DataError(path, "placeholders belong in the body; the preamble is fixed text",
                    field=f"{field}.preamble")
  examples = []
  for i, ex in enumerate(_expect(raw.get("examples", []), list, path, f"{field}.examples")):
    where = f"{field}.examples[{i}]"
    _expect(ex, dict, path, where)
    _unknown(ex, {"values", "response"}, path, where)
    for key, kind in (("values", dict), ("response", str)):
      if key not in ex:
        raise DataError(path, "missing", field=f"{where}.{key}")
      _expect(ex[key], kind, path, f"{where}.{key}")
    for k, v in ex["values"].items():
      _expect(v, str, path, f"{where}.values.{k}")
    try:
      render(body, ex["values"], "values")
    except TemplateError as e:
      raise DataError(path, str(e), field=f"{where}.values") from None
    examples.append(FewShotExample(dict(ex["values"]), ex["response"]))
  sources = _expect(raw.get("sources", []), list, path, f"{field}.sources")
  for i, s in enumerate(sources):
    _expect(s, str, path, f"{field}.sources[{i}]")
  return TextTemplate(name=name, body=body, chat_format=fmt, preamble=raw.get("preamble", ""),
                      examples=tuple(examples), sources=tuple(sources))


def _dynamic_from_json(name: str, raw: Any, templates: Mapping[str, TextTemplate],
                       path: pathlib.Path) -> DynamicTemplate:
  field = f"dynamic.{name}"
  _expect(raw, dict, path, field)
  _unknown(raw, _DYNAMIC_FIELDS, path, field)
  for key in ("routes", "default"):
    if key not in raw:
      raise DataError(path, "missing", field=f"{field}.{key}")
  routes = _expect(raw["routes"], dict, path, f"{field}.routes")
  default = _expect(raw["default"], str, path, f"{field}.default")

  def lookup(template: Any, where: str) -> TextTemplate:
    _expect(template, str, path, where)
    if template not in templates:
      raise DataError(path, f"names no template {template!r}; known: "
                      f"{', '.join(templates) or 'none'}", field=where)
    return templates[template]

  return DynamicTemplate(
      name=name, default=lookup(default, f"{field}.default"),
      routes={label: lookup(t, f"{field}.routes.{label}") for label, t in routes.items()})


def load_library(path: str | pathlib.Path) -> TemplateLibrary:
  """Reads a template library JSON file; a DataError names the file and field on bad input."""
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise DataError(path, "file not found") from None
  try:
    raw = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=e.lineno) from None
  _expect(raw, dict, path, "<top level>")
  _unknown(raw, {"templates", "dynamic", "description"}, path, "<top level>")
  if "templates" not in raw:
    raise DataError(path, "missing", field="templates")
  raw_templates = _expect(raw["templates"], dict, path, "templates")
  if not raw_templates:
    raise DataError(path, "no templates", field="templates")
  templates = {name: _template_from_json(name, t, path) for name, t in raw_templates.items()}
  raw_dynamic = _expect(raw.get("dynamic", {}), dict, path, "dynamic")
  clash = sorted(set(raw_dynamic) & set(templates))
  if clash:
    raise DataError(path, f"name {clash[0]!r} is both a template and a dynamic template",
                    field=f"dynamic.{clash[0]}")
  dynamic = {name: _dynamic_from_json(name, d, templates, path)
             for name, d in raw_dynamic.items()}
  return TemplateLibrary(templates, dynamic, source=str(path))


def template_texts(template: Template) -> list[str]:
  """Every fixed text a template shows the model (preambles, example bodies and responses):
  what an evaluation set must not overlap, or the template was written from it."""
  out = []
  for t in (template.templates if isinstance(template, DynamicTemplate) else (template,)):
    out.append(t.preamble)
    for ex in t.examples:
      out += list(ex.values.values()) + [ex.response]
  return [s for s in out if s.strip()]


def resolve_template(name: str, library_file: str | pathlib.Path | None = None
                     ) -> Template | None:
  """A template by name: 'none' (raw prompt, None), a turn format (gemma_chat, alpaca, plain:
  the prompt as the instruction, nothing added), else a template of `library_file`."""
  if name == "none":
    return None
  if name in FORMATS:
    return TextTemplate(name=name, chat_format=name)
  if not library_file:
    raise KeyError(f"template {name!r} is not one of none, {', '.join(FORMATS)}; name a "
                   "template library file to use its templates")
  return load_library(library_file).get(name)
