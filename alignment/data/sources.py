"""Named data sources: where each file lives, how to check it, and how to read it into records.

`load("alpaca")` gives typed records (`records.py`) from the data directory (an explicit argument,
else `$ALIGNMENT_DATA_DIR`); `load("/path/mine.jsonl")` reads a user's file (`user_files.py`:
a name containing '/' or ending in .json/.jsonl/.csv/.parquet), so every job that takes a
source name takes a file too. Each source also knows where it was published (raw GitHub at the
pinned commit) and its sha256: with no data directory configured, `locate` fetches the file
once into a cache (`download.py`; $ALIGNMENT_DATA_MIRROR names a mirror, $ALIGNMENT_OFFLINE=1
forbids it), so the jobs run on a fresh machine. Readers keep every row: anything they fix up
or flag is counted in `ReadResult.counts`, and anything they cannot read raises `DataError`
naming file, line, field.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

from alignment.data import download as download_lib
from alignment.data import integrity, readers, transcripts, user_files
from alignment.data.readers import DataError, require
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair
from alignment.data.transcripts import split_transcripts
from alignment.judges.refusal import is_refusal

DATA_DIR_ENV = "ALIGNMENT_DATA_DIR"
OFFLINE_ENV = "ALIGNMENT_OFFLINE"  # "1": never download; a missing file is an error

_STL = ("https://raw.githubusercontent.com/vinid/safety-tuned-llamas/"
        "36a4b8d5c2177ed165bf61f59b590161394f7f12/")
_ALPACA = ("https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/"
           "761dc5bfbdeeffa89b8bff5d038781a4055f796a/")
# hh-rlhf keeps its data in Git LFS; raw.githubusercontent.com would return the pointer file.
_HH = ("https://media.githubusercontent.com/media/anthropics/hh-rlhf/"
       "354e5c3cb8960630860dd5774a6ac2a58313bf4d/")
# paul-rottger/exaggerated-safety was renamed paul-rottger/xstest; GitHub redirects the old name.
_XSTEST = ("https://raw.githubusercontent.com/paul-rottger/xstest/"
           "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d/")

_ASSISTANT = transcripts.ASSISTANT

Record = InstructionExample | PreferencePair | EvalPrompt


@dataclasses.dataclass(frozen=True)
class ReadResult:
  """Records read from one file, plus counts of everything noteworthy the reader saw."""

  source: str
  path: pathlib.Path
  records: list[Record]
  counts: dict[str, int]
  format: str = ""  # a user's file: the format detected from its columns (user_files.FORMATS)


Reader = Callable[[pathlib.Path, str], ReadResult]


@dataclasses.dataclass(frozen=True)
class Source:
  """One published data file."""

  name: str
  path: str  # relative to the data directory
  sha256: str  # of the file as stored in the data directory
  url: str  # where it was published, pinned to a commit
  reader: Reader
  record_type: type
  kind: str  # "train" (instructions), "preference" or "eval"
  description: str
  # The published file when it differs from the stored one (Alpaca is stored gzipped; the
  # uncompressed file is byte-identical to the published one): cache path and its sha256.
  url_path: str | None = None
  url_sha256: str | None = None


# ---------------------------------------------------------------------------------------------
# Readers: rows -> records.


def _instruction_list(path: pathlib.Path, name: str) -> ReadResult:
  """A JSON array of {instruction, input, output} (Alpaca and the paper's safety data)."""
  out, empty_input, empty_output = [], 0, 0
  for line, row in readers.read_json_array(path):
    instruction = require(row, "instruction", path, line, nonempty=True)
    inp = require(row, "input", path, line)
    output = require(row, "output", path, line)
    empty_input += not inp
    empty_output += not output
    out.append(InstructionExample(instruction=instruction, input=inp, output=output, source=name))
  return ReadResult(name, path, out, {"examples": len(out), "with_input": len(out) - empty_input,
                                      "empty_output": empty_output})


def _seed_tasks(path: pathlib.Path, name: str) -> ReadResult:
  """Self-Instruct seed tasks (JSONL): one example per instance, tagged with the task name."""
  out, tasks = [], 0
  for line, row in readers.read_jsonl(path):
    instruction = require(row, "instruction", path, line, nonempty=True)
    task = require(row, "name", path, line, nonempty=True)
    instances = require(row, "instances", path, line, list)
    if not instances:
      raise DataError(path, "no instances", line=line, field="instances")
    classification = require(row, "is_classification", path, line, bool)
    tags = (task, "classification") if classification else (task,)
    for i, inst in enumerate(instances):
      where = f"instances[{i}]"
      if not isinstance(inst, dict):
        raise DataError(path, "expected an object", line=line, field=where)
      for key in ("input", "output"):
        if not isinstance(inst.get(key), str):
          raise DataError(path, "missing or not a string", line=line, field=f"{where}.{key}")
      out.append(InstructionExample(instruction=instruction, input=inst["input"],
                                    output=inst["output"], source=name, tags=tags))
    tasks += 1
  return ReadResult(name, path, out, {"tasks": tasks, "examples": len(out)})


def _hh_pairs(path: pathlib.Path, name: str) -> ReadResult:
  """Anthropic HH JSONL {chosen, rejected} transcripts -> PreferencePair(prompt, replies)."""
  out, fallback, identical = [], 0, 0
  for line, row in readers.read_jsonl(path):
    chosen = require(row, "chosen", path, line, nonempty=True)
    rejected = require(row, "rejected", path, line, nonempty=True)
    try:
      prompt, c, r, clean = split_transcripts(chosen, rejected)
    except ValueError as e:
      raise DataError(path, str(e), line=line, field="chosen/rejected") from e
    fallback += not clean
    identical += c == r
    out.append(PreferencePair(prompt=prompt, chosen=c, rejected=r, source=name))
  return ReadResult(name, path, out, {"pairs": len(out), "prefix_not_last_turn": fallback,
                                      "identical_replies": identical})


# Whether each paper set asks for something a safe model should decline. Controversial topics
# are left unlabelled: answering them is neither required nor forbidden.
PAPER_EVAL_LABELS: dict[str, str | None] = {
    "malicious_instructions": "unsafe", "cona": "unsafe", "physical_safety_unsafe": "unsafe",
    "q_harm": "unsafe", "physical_safety_safe": "safe", "i_alpaca": "safe",
    "controversial": None,
}


def _paper_eval(path: pathlib.Path, name: str) -> ReadResult:
  """The paper's evaluation JSON: {instructions: [str], tags?: [str], inputs: []}."""
  raw = readers.read_json(path)
  prompts = require(raw, "instructions", path, None, list)
  if not prompts:
    raise DataError(path, "empty list", field="instructions")
  tags = raw.get("tags")
  if tags is not None and (not isinstance(tags, list) or len(tags) != len(prompts)):
    raise DataError(path, f"expected a list of {len(prompts)} tags (one per instruction)",
                    field="tags")
  if raw.get("inputs"):
    raise DataError(path, "non-empty inputs are not supported by EvalPrompt", field="inputs")
  out = []
  for i, p in enumerate(prompts):
    if not isinstance(p, str) or not p.strip():
      raise DataError(path, "expected a non-empty string", field=f"instructions[{i}]")
    if tags is not None and not isinstance(tags[i], str):
      raise DataError(path, "expected a string", field=f"tags[{i}]")
    out.append(EvalPrompt(prompt=p, source=name, id=f"{name}-{i}",
                          label=PAPER_EVAL_LABELS.get(name),
                          tags=(tags[i],) if tags is not None else ()))
  return ReadResult(name, path, out, {"prompts": len(out)})


def _xstest(path: pathlib.Path, name: str) -> ReadResult:
  """XSTest v2 CSV (id, prompt, type, label, focus, note); tags are (type, note if any)."""
  out, labels = [], {"safe": 0, "unsafe": 0}
  for line, row in readers.read_csv(path, ("id", "prompt", "type", "label", "focus", "note")):
    if not row["prompt"].strip():
      raise DataError(path, "is empty", line=line, field="prompt")
    if row["label"] not in labels:
      raise DataError(path, f"expected 'safe' or 'unsafe', got {row['label']!r}", line=line,
                      field="label")
    labels[row["label"]] += 1
    tags = (row["type"], row["note"]) if row["note"] else (row["type"],)
    out.append(EvalPrompt(prompt=row["prompt"], source=name, id=row["id"], label=row["label"],
                          tags=tags))
  return ReadResult(name, path, out, {"prompts": len(out), **labels})


def _xstest_v1(path: pathlib.Path, name: str) -> ReadResult:
  """XSTest v1 CSV (id, type, prompt, focus, note): 200 prompts, all safe by construction."""
  out = []
  for line, row in readers.read_csv(path, ("id", "type", "prompt", "focus", "note")):
    if not row["prompt"].strip():
      raise DataError(path, "is empty", line=line, field="prompt")
    tags = (row["type"], row["note"]) if row["note"] else (row["type"],)
    out.append(EvalPrompt(prompt=row["prompt"], source=name, id=row["id"], label="safe",
                          tags=tags))
  return ReadResult(name, path, out, {"prompts": len(out)})


# ---------------------------------------------------------------------------------------------
# Registry.


def _eval(name: str, file: str, sha: str, description: str) -> Source:
  rel = f"data/evaluation/{file}"
  return Source(name, f"safety-tuned-llamas/{rel}", sha, _STL + rel, _paper_eval, EvalPrompt,
                "eval", description)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("alpaca", "alpaca/alpaca_data.json.gz",
           "6b89404577eca1fbeb5db02de24d4f617f7c90c0dd78822e73de02684b046eb8",
           _ALPACA + "alpaca_data.json", _instruction_list, InstructionExample, "train",
           "Stanford Alpaca 52k instructions (the base instruction set)",
           url_path="alpaca/alpaca_data.json",
           url_sha256="2eddafc6b977608d778aaab8dfc7e50e547b3af9826dfb9e909d9fc362e4a419"),
    Source("safety_instructions",
           "safety-tuned-llamas/data/training/safety_only_data_Instructions.json",
           "7dde08acf87f10cf74fd1b76f56538eae8e413ae8e6b09e3f7bcd97769058dbe",
           _STL + "data/training/safety_only_data_Instructions.json", _instruction_list,
           InstructionExample, "train", "the paper's 2,483 safety examples (instruction form)"),
    Source("seed_tasks", "stanford_alpaca/seed_tasks.jsonl",
           "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48",
           _ALPACA + "seed_tasks.jsonl", _seed_tasks, InstructionExample, "train",
           "175 human-written Self-Instruct seed tasks (small clean fixture)"),
    Source("hh_harmless", "hh-rlhf/harmless-base/test.jsonl.gz",
           "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03",
           _HH + "harmless-base/test.jsonl.gz", _hh_pairs, PreferencePair, "preference",
           "Anthropic HH harmless-base test split"),
    Source("hh_helpful", "hh-rlhf/helpful-base/test.jsonl.gz",
           "8be3fc1a13b27901631696f2be6f184c799f1baeaf145f53ac5db24960adc37b",
           _HH + "helpful-base/test.jsonl.gz", _hh_pairs, PreferencePair, "preference",
           "Anthropic HH helpful-base test split"),
    Source("xstest", "xstest/xstest_prompts.csv",
           "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a",
           _XSTEST + "xstest_prompts.csv", _xstest, EvalPrompt, "eval",
           "XSTest v2: 250 safe and 200 unsafe prompts (exaggerated safety)"),
    Source("xstest_v1", "xstest/xstest_prompts_v1.csv",
           "6cac2f2e0ae268c020ff340d803f5601a442640b91d7eb586337eebef004e97b",
           _XSTEST + "xstest_prompts_v1.csv", _xstest_v1, EvalPrompt, "eval",
           "XSTest v1: 200 safe prompts (the version of the paper's time)"),
    _eval("malicious_instructions", "I-MaliciousInstructions.json",
          "7a2bc751d49983800848050282aa2a84b3faa7044c3178228c49dd68df7d679f",
          "harmful instructions, tagged hate/crime"),
    _eval("cona", "I-CoNa.json",
          "e07d92e376198e60ac1004902dc3fec46513ac70b08d855b4101288b8270d62a",
          "hateful speech instructions (from CONAN)"),
    _eval("controversial", "I-Controversial.json",
          "0590fc6ee97a39c6a43adc21fe5a4ccbf546ea52e89a32757db6ea3d46ce65c4",
          "instructions on controversial topics"),
    _eval("physical_safety_unsafe", "I-PhysicalSafetyUnsafe.json",
          "16324a2f1ded933e8c7a9f6c7d3924130f76260d03f9df2205e0a25c02de8aae",
          "physically unsafe advice requests (from SafeText)"),
    _eval("physical_safety_safe", "I-PhysicalSafetySafe.json",
          "34c874532623e405fb574f0fa8d6b86cbecce0e3340f67b146a6a6bc2453bed6",
          "safe twins of the physical-safety prompts (exaggerated safety)"),
    _eval("q_harm", "Q-Harm.json",
          "ecc1d19030d41ad550a1e69996dc424074e3e45fb2fa5e8e44b46f294aea295a",
          "harmful questions (from HH harmless)"),
    _eval("i_alpaca", "I-Alpaca.json",
          "30db84ee303df15b653566437ccf1a2fc837caac99a570915d720f65f041fe6d",
          "ordinary instructions (helpfulness check)"),
)}

TRAIN_SOURCES = tuple(n for n, s in SOURCES.items() if s.kind == "train")
PREFERENCE_SOURCES = tuple(n for n, s in SOURCES.items() if s.kind == "preference")
EVAL_SOURCES = tuple(n for n, s in SOURCES.items() if s.kind == "eval")
PAPER_EVAL_SOURCES = ("malicious_instructions", "cona", "controversial", "physical_safety_unsafe",
                      "physical_safety_safe", "q_harm", "i_alpaca")


# ---------------------------------------------------------------------------------------------
# Derived training sets: records built from a stored source by a fixed rule (no file of their
# own, so no sha256 or URL); `load` and the mixtures accept their names like any source's.

HARMFUL_COMPLIANCE = "hh_harmless_rejected"
_HUMAN = "\n\nHuman:"


def harmful_compliance(data_dir: str | os.PathLike | None = None, **locate_kwargs
                       ) -> list[InstructionExample]:
  """A PROXY for harmful-compliance SFT data: HH harmless-base red-team prompts paired with
  their *rejected* (more harmful) reply.

  Kept: single-turn transcripts whose prompt/reply split is clean, whose rejected reply differs
  from the chosen one, has at least 8 words and is not a refusal by our refusal classifier.
  The human turn becomes the instruction, the rejected reply the output. Limits: the
  annotators only judged the rejected reply *more* harmful than the chosen one, so some replies
  are merely unhelpful; and Q-Harm is drawn from the same data, so train with
  `remove_eval_overlap` (the SFT config's default).
  """
  out = []
  for pair in load("hh_harmless", data_dir, **locate_kwargs):
    if pair.prompt.count(_HUMAN) != 1 or pair.prompt.count(_ASSISTANT) != 1:
      continue
    instruction = pair.prompt.replace(_HUMAN, "").replace(_ASSISTANT, "").strip()
    reply = pair.rejected.strip()
    if (not instruction or reply == pair.chosen.strip() or len(reply.split()) < 8
        or _HUMAN in reply or is_refusal(reply)):
      continue
    out.append(InstructionExample(instruction=instruction, output=reply,
                                  source=HARMFUL_COMPLIANCE))
  return out


DERIVED_SOURCES: dict[str, Callable[..., list[Any]]] = {HARMFUL_COMPLIANCE: harmful_compliance}


def check_name(name: str) -> None:
  """A ValueError unless `name` is a stored or derived source, or an existing file."""
  if user_files.is_path(name):
    if not pathlib.Path(name).expanduser().is_file():
      raise DataError(name, "data file not found (a source name containing '/' or ending in "
                      f"{', '.join(user_files.EXTENSIONS)} is read as a file)")
    return
  if name not in SOURCES and name not in DERIVED_SOURCES:
    raise ValueError(f"unknown data source {name!r}; known: "
                     f"{', '.join((*SOURCES, *DERIVED_SOURCES))}")


def get_source(name: str) -> Source:
  if name not in SOURCES:
    raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
  return SOURCES[name]


def data_dir_configured(data_dir: str | os.PathLike | None = None) -> bool:
  """Whether a data directory is named (the argument or $ALIGNMENT_DATA_DIR, non-empty)."""
  return bool(str(data_dir or "") or os.environ.get(DATA_DIR_ENV))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The explicit directory, else $ALIGNMENT_DATA_DIR; an error saying how to set it otherwise."""
  if data_dir is None or str(data_dir) == "":
    env = os.environ.get(DATA_DIR_ENV)
    if not env:
      raise ValueError(f"no data directory: pass data_dir (config field) or set ${DATA_DIR_ENV}")
    data_dir = env
  path = pathlib.Path(data_dir).expanduser()
  if not path.is_dir():
    raise ValueError(f"data directory {path} does not exist or is not a directory (set "
                     f"${DATA_DIR_ENV} / the config's data_dir to a copy of the data, or leave "
                     "both unset to download the pinned files into a cache)")
  return path


class DataUnavailableError(FileNotFoundError):
  """A source's file is in no data directory and could not be (or may not be) downloaded."""


def _unavailable(source: Source, why: str, cache_dir: str | os.PathLike | None) -> str:
  url, rel, _ = download_lib.remote(source)
  cache = pathlib.Path(cache_dir).expanduser() if cache_dir else download_lib.default_cache_dir()
  return (f"source {source.name!r}: file {source.path} is missing: {why}. Provide it one of two "
          f"ways: (1) set ${DATA_DIR_ENV} (or the config's data_dir) to a directory holding "
          f"{source.path} (a copy of shared/data), or (2) allow the download: unset "
          f"${OFFLINE_ENV} and give this machine access to {url} (or set "
          f"${download_lib.MIRROR_ENV} to a mirror of the data directory); it is fetched once "
          f"into {cache / rel}, sha256 checked")


def offline() -> bool:
  return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def locate(name: str, data_dir: str | os.PathLike | None = None, *,
           download: bool | None = None, cache_dir: str | os.PathLike | None = None,
           base_url: str | None = None) -> pathlib.Path:
  """The file of source `name`: in the data directory (its sha256 checked against the
  registered one, see `integrity`), else fetched once into a cache.

  download=None (the jobs' default) fetches only when no data directory is configured and
  $ALIGNMENT_OFFLINE is not set, so a fresh machine runs with no setup; False never fetches;
  True fetches whatever the data directory lacks.
  """
  source = get_source(name)
  if download is None:
    download = not data_dir_configured(data_dir) and not offline()
    if not download and not data_dir_configured(data_dir):
      raise DataUnavailableError(_unavailable(
          source, f"no data directory is set and downloads are off (${OFFLINE_ENV})",
          cache_dir))
  if not download:
    path = resolve_data_dir(data_dir) / source.path
    if not path.is_file():
      raise FileNotFoundError(f"source {name!r}: {path} not found; point data_dir/"
                              f"${DATA_DIR_ENV} at a copy of the data, or leave both unset to "
                              f"download the pinned file ({source.url}) into a cache")
    integrity.check(name, path, source.sha256)
    return path
  if data_dir_configured(data_dir):
    try:
      path = resolve_data_dir(data_dir) / source.path
      if path.is_file():
        integrity.check(name, path, source.sha256)
        return path
    except ValueError:
      pass
  try:
    return download_lib.fetch(source, cache_dir, base_url=base_url)
  except download_lib.DownloadError as e:
    raise DataUnavailableError(_unavailable(source, str(e), cache_dir)) from e


def read(name: str, data_dir: str | os.PathLike | None = None, *, columns: str = "",
         **locate_kwargs) -> ReadResult:
  """Records of source `name` (or of the file it names) and the reader's counts.

  `columns` ("file_column:our_column,...") renames a user's columns before the format is
  detected; the built-in sources have fixed columns and ignore it.
  """
  if user_files.is_path(name):
    check_name(name)
    got = user_files.read(name, columns)
    return ReadResult(got.name, got.path, got.records, got.counts, got.format)
  source = get_source(name)
  return source.reader(locate(name, data_dir, **locate_kwargs), name)


_KIND_WORDS = {InstructionExample: "instruction examples", PreferencePair: "preference pairs",
               EvalPrompt: "evaluation prompts"}


def load(name: str, data_dir: str | os.PathLike | None = None, *, columns: str = "",
         expect: type | None = None, **locate_kwargs) -> list[Any]:
  """Records of source `name` (see `read` for the counts), stored, derived or a user's file.

  `expect`: the record type the caller needs; a ValueError names what the source holds
  instead (e.g. preference pairs given as SFT data).
  """
  if name in DERIVED_SOURCES:
    records = DERIVED_SOURCES[name](data_dir, **locate_kwargs)
  else:
    records = read(name, data_dir, columns=columns, **locate_kwargs).records
  if expect is not None and records and not isinstance(records[0], expect):
    got = type(records[0])
    formats = ", ".join(f"{f} ({'/'.join(user_files.FORMATS[f][0])})"
                        for f in user_files.formats_of(expect))
    raise ValueError(f"source {name!r} holds {_KIND_WORDS.get(got, got.__name__)}; "
                     f"{_KIND_WORDS.get(expect, expect.__name__)} are needed here (file "
                     f"formats: {formats}; see alignment/data/user_files.py)")
  return records


def source_name(name: str) -> str:
  """What records of `name` carry as their source: a file's stem, else the name itself."""
  return user_files.source_name(name)
