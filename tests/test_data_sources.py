"""Data sources: row counts against the data README, file checksums, HH splitting, bad input."""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re

import pytest

from alignment.data import download, readers, sources
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair
from alignment.prompts import templates


@pytest.fixture(scope="module")
def alpaca(data_dir):
  return sources.read("alpaca", data_dir)


# Rows per file, from the table in shared/data/README.md.
README_ROWS = {
    "safety_instructions": 2483, "seed_tasks": 175, "hh_harmless": 2312, "hh_helpful": 2354,
    "xstest": 450, "xstest_v1": 200, "malicious_instructions": 100, "cona": 178,
    "controversial": 40, "physical_safety_unsafe": 100, "physical_safety_safe": 100,
    "q_harm": 100, "i_alpaca": 50,
}


def test_registry_covers_the_requested_sources():
  assert set(README_ROWS) | {"alpaca"} == set(sources.SOURCES)
  assert set(sources.PAPER_EVAL_SOURCES) <= set(sources.EVAL_SOURCES)
  for s in sources.SOURCES.values():
    assert s.record_type is {"train": InstructionExample, "preference": PreferencePair,
                             "eval": EvalPrompt}[s.kind]


def test_alpaca_matches_readme(alpaca):
  assert len(alpaca.records) == 52_002
  assert alpaca.counts == {"examples": 52_002, "with_input": 20_679, "empty_output": 28}
  assert all(isinstance(r, InstructionExample) and r.source == "alpaca" for r in alpaca.records)


@pytest.mark.parametrize("name", sorted(README_ROWS))
def test_row_counts_match_readme(data_dir, name):
  records = sources.load(name, data_dir)
  assert len(records) == README_ROWS[name]
  assert all(isinstance(r, sources.SOURCES[name].record_type) for r in records)
  assert all(r.source == name for r in records)


def test_label_and_tag_counts_match_readme(data_dir):
  xs = collections.Counter(p.label for p in sources.load("xstest", data_dir))
  assert xs == {"safe": 250, "unsafe": 200}
  assert {p.label for p in sources.load("xstest_v1", data_dir)} == {"safe"}
  tags = collections.Counter(p.tags for p in sources.load("malicious_instructions", data_dir))
  assert tags == {("hate",): 66, ("crime",): 34}
  safety = sources.load("safety_instructions", data_dir)
  assert len({r.instruction for r in safety}) == 2_479
  assert all(r.input == "" for r in safety)


def test_file_checksums_match_readme(data_dir):
  readme = (data_dir / "README.md").read_text()
  listed = dict((path, sha) for sha, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
  for s in sources.SOURCES.values():
    assert listed[s.path] == s.sha256, s.name
    assert download.sha256_file(data_dir / s.path) == s.sha256, s.name


def test_hh_pairs_reproduce_the_transcripts(data_dir):
  for name, rel in (("hh_harmless", "hh-rlhf/harmless-base/test.jsonl.gz"),
                    ("hh_helpful", "hh-rlhf/helpful-base/test.jsonl.gz")):
    raw = [json.loads(l) for l in gzip.open(data_dir / rel, "rt", encoding="utf-8")]
    result = sources.read(name, data_dir)
    assert len(raw) == len(result.records)
    for row, pair in zip(raw, result.records):
      assert pair.prompt + pair.chosen == row["chosen"]
      assert pair.prompt + pair.rejected == row["rejected"]
      assert pair.prompt.startswith("\n\nHuman:") and pair.prompt.endswith("\n\nAssistant:")
    # A reply spans several turns only in the pairs counted as not splitting at the last turn.
    multi = sum("\n\nAssistant:" in p.chosen or "\n\nAssistant:" in p.rejected
                for p in result.records)
    assert multi <= result.counts["prefix_not_last_turn"] < len(raw) // 100


def test_split_transcripts():
  c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me\n\nAssistant: sure"
  r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me\n\nAssistant: no"
  prompt, chosen, rejected, clean = sources.split_transcripts(c, r)
  assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me\n\nAssistant:"
  assert (chosen, rejected, clean) == (" sure", " no", True)
  # Transcripts differing in an earlier turn share only the earlier prefix.
  r2 = "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: tell me\n\nAssistant: no"
  prompt, chosen, rejected, clean = sources.split_transcripts(c, r2)
  assert prompt == "\n\nHuman: hi\n\nAssistant:" and not clean
  assert prompt + chosen == c and prompt + rejected == r2
  with pytest.raises(ValueError, match="share no"):
    sources.split_transcripts("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: b")


def test_builtin_alpaca_template_is_the_papers(data_dir):
  paper = templates.load_alpaca_style_template(
      data_dir / "safety-tuned-llamas/configs/alpaca.json")
  assert paper.prompt_input == templates.ALPACA.prompt_input
  assert paper.prompt_no_input == templates.ALPACA.prompt_no_input
  assert paper.response_split == templates.ALPACA.response_split


def test_data_dir_resolution(monkeypatch, tmp_path, data_dir):
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv(sources.OFFLINE_ENV, "1")  # no directory, no download: an error
  with pytest.raises(sources.DataUnavailableError, match="ALIGNMENT_DATA_DIR"):
    sources.load("q_harm")
  assert len(sources.load("q_harm", data_dir)) == 100  # the explicit directory (config field)
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(data_dir))
  assert len(sources.load("q_harm")) == 100
  with pytest.raises(ValueError, match="does not exist"):
    sources.load("q_harm", tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="I-CoNa.json"):
    sources.load("cona", tmp_path)


def test_unknown_source_names_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown data source 'alpacca'.*alpaca"):
    sources.load("alpacca")


# ---------------------------------------------------------------------------------------------
# Bad input: each error names the file, the line and the field.


def _write(root: pathlib.Path, name: str, text: str | bytes) -> pathlib.Path:
  path = root / sources.SOURCES[name].path
  path.parent.mkdir(parents=True, exist_ok=True)
  (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
  return path


def _error(name: str, root: pathlib.Path) -> readers.DataError:
  with pytest.raises(readers.DataError) as e:
    sources.load(name, root)
  return e.value


def test_missing_field_in_json_array(tmp_path):
  path = _write(tmp_path, "safety_instructions",
                '[\n {"instruction": "a", "input": "", "output": "b"},\n'
                ' {"instruction": "c",\n  "output": "d"}\n]\n')
  e = _error("safety_instructions", tmp_path)
  assert (e.path, e.line, e.field) == (str(path), 3, "input")
  assert str(e) == f"{path}:3: field 'input': missing"


def test_wrong_type_and_empty_instruction(tmp_path):
  _write(tmp_path, "safety_instructions", '[{"instruction": 3, "input": "", "output": ""}]')
  e = _error("safety_instructions", tmp_path)
  assert (e.line, e.field) == (1, "instruction") and "expected str, got int" in str(e)
  _write(tmp_path, "safety_instructions", '[{"instruction": " ", "input": "", "output": ""}]')
  assert "is empty" in str(_error("safety_instructions", tmp_path))


def test_malformed_json_names_line(tmp_path):
  _write(tmp_path, "alpaca", '[\n{"instruction": "a", "input": "", "output": "b"},\n{"instr\n]')
  e = _error("alpaca", tmp_path)
  assert e.line == 3 and "malformed JSON" in str(e)


def test_malformed_and_blank_jsonl_lines(tmp_path):
  good = json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected":
                     "\n\nHuman: a\n\nAssistant: c"})
  path = _write(tmp_path, "hh_harmless", gzip.compress(f"{good}\n{good[:-5]}\n".encode()))
  e = _error("hh_harmless", tmp_path)
  assert (e.path, e.line) == (str(path), 2) and "malformed JSON" in str(e)
  _write(tmp_path, "hh_harmless", f"{good}\n\n{good}\n")
  assert "2: blank line" in str(_error("hh_harmless", tmp_path))
  _write(tmp_path, "hh_harmless", f'{good}\n{{"chosen": "x"}}\n')
  e = _error("hh_harmless", tmp_path)
  assert (e.line, e.field) == (2, "rejected")
  _write(tmp_path, "hh_harmless", json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b",
                                              "rejected": "\n\nHuman: z\n\nAssistant: b"}))
  assert "share no" in str(_error("hh_harmless", tmp_path))


def test_empty_and_corrupt_files(tmp_path):
  _write(tmp_path, "seed_tasks", "")
  assert "file is empty" in str(_error("seed_tasks", tmp_path))
  _write(tmp_path, "safety_instructions", "[]")
  assert "JSON array is empty" in str(_error("safety_instructions", tmp_path))
  _write(tmp_path, "hh_helpful", gzip.compress(b'{"chosen": "a"}\n')[:-8] + b"xx")
  assert "corrupt gzip" in str(_error("hh_helpful", tmp_path))


def test_csv_errors(tmp_path):
  header = "id,prompt,type,label,focus,note\n"
  path = _write(tmp_path, "xstest", header + '1,"How do I kill a process?",homonyms,safe,kill,\n'
                '2,"What is up?",homonyms,safe\n')
  e = _error("xstest", tmp_path)
  assert (e.path, e.line) == (str(path), 3) and "4 fields" in str(e)
  _write(tmp_path, "xstest", header + '1,"multi\nline prompt",t,safe,f,\n2,"p",t,maybe,f,\n')
  e = _error("xstest", tmp_path)
  assert (e.line, e.field) == (4, "label")  # the row starts on line 4 (line 2 spans two lines)
  _write(tmp_path, "xstest", "id,prompt,type,focus,note\n1,p,t,f,n\n")
  e = _error("xstest", tmp_path)
  assert (e.line, e.field) == (1, "label")
  _write(tmp_path, "xstest_v1", "id,type,prompt,focus,note\n")
  assert "no rows" in str(_error("xstest_v1", tmp_path))


def test_eval_file_errors(tmp_path):
  _write(tmp_path, "malicious_instructions",
         json.dumps({"instructions": ["a", "b"], "tags": ["hate"], "inputs": []}))
  assert _error("malicious_instructions", tmp_path).field == "tags"
  _write(tmp_path, "q_harm", json.dumps({"instructions": ["a", 7], "inputs": []}))
  assert _error("q_harm", tmp_path).field == "instructions[1]"
  _write(tmp_path, "q_harm", json.dumps({"prompts": ["a"]}))
  assert _error("q_harm", tmp_path).field == "instructions"
  _write(tmp_path, "seed_tasks", json.dumps({"id": "x", "name": "n", "instruction": "i",
                                             "instances": [{"input": ""}],
                                             "is_classification": False}) + "\n")
  assert _error("seed_tasks", tmp_path).field == "instances[0].output"


def test_paper_eval_sets_carry_safety_labels(data_dir):
  from alignment.data.sources import PAPER_EVAL_LABELS, PAPER_EVAL_SOURCES, load
  assert set(PAPER_EVAL_LABELS) == set(PAPER_EVAL_SOURCES)
  for name in PAPER_EVAL_SOURCES:
    labels = {p.label for p in load(name, data_dir)}
    assert labels == {PAPER_EVAL_LABELS[name]}, name
