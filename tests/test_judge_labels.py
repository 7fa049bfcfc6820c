"""The labelling tool: stratified draws, fixed splits, fixture validation, agreement figures."""

import json

import pytest

from alignment.data.readers import DataError
from alignment.evaluation import stats
from alignment.judges import refusal
from experiments import judge_labels
from test_reproduction import COMPLY, REFUSE, fake_run


def test_sample_is_stratified_and_splits_are_fixed(tmp_path):
  answers = ([("malicious_instructions", "unsafe", REFUSE)] * 5
             + [("xstest", "safe", COMPLY)] * 5 + [("xstest", "unsafe", COMPLY)] * 5)
  fake_run(tmp_path, "a", 0, "instruction", 0, answers)
  fake_run(tmp_path, "b", 0, "instruction", 1, answers)
  fake_run(tmp_path, "c", 30, "question", 0, answers)
  rows = judge_labels.sample(tmp_path, per_cell=3)
  cells = {}
  for r in rows:
    cells.setdefault((r["num_safety"], r["format"], r["set"]), []).append(r)
  assert set(cells) == {(k, f, s) for k, f in ((0, "instruction"), (30, "question"))
                        for s in ("malicious_instructions", "xstest_safe", "xstest_unsafe")}
  assert all(len(v) == 3 for v in cells.values())
  assert {r["run"] for r in cells[(0, "instruction", "xstest_safe")]} <= {"a", "b"}
  assert rows == judge_labels.sample(tmp_path, per_cell=3)  # same seed, same draw
  assert all(r["split"] == judge_labels.split_of(r["key"]) for r in rows)
  splits = [judge_labels.split_of(f"run/set/{i}") for i in range(400)]
  assert 150 < splits.count("held_out") < 250


def write_labels(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(key, answer, label, split="held_out", **extra):
  return {"key": key, "run": "r", "num_safety": 0, "format": "instruction",
          "set": "xstest_safe", "prompt": "p", "answer": answer, "label": label,
          "split": split, **extra}


def test_agreement_figures_by_hand(tmp_path):
  rows = [row("1", REFUSE, "full_refusal"), row("2", COMPLY, "full_compliance"),
          row("3", "It is illegal to do that.", "full_refusal"),  # a miss
          row("4", COMPLY, "full_compliance", split="tune"),
          row("5", "I cannot. However, here is how.", "partial_refusal", split="tune")]
  write_labels(tmp_path / "l.jsonl", rows)
  labelled = judge_labels.read_labels(tmp_path / "l.jsonl")
  held = [r for r in labelled if r.split == "held_out"]
  a = judge_labels.agreement(held)
  assert (a.accuracy.k, a.accuracy.n) == (2, 3)
  assert (a.precision.k, a.precision.n) == (1, 1) and (a.recall.k, a.recall.n) == (1, 2)
  assert a.kappa == pytest.approx(stats.cohen_kappa([True, False, True],
                                                    [True, False, False]))
  md = judge_labels.report(labelled)
  assert "| **held_out** | 3 |" in md and "| **all** | 5 |" in md
  assert refusal.PARTIAL_REFUSAL in md


@pytest.mark.parametrize("bad,message", [
    ({"label": "refused"}, "expected one of"),
    ({"split": "train"}, "expected one of"),
    ({"num_safety": "0"}, "expected int"),
    ({"answer": None}, "expected str"),
])
def test_bad_fixture_rows_name_file_line_and_field(tmp_path, bad, message):
  write_labels(tmp_path / "l.jsonl", [row("1", "x", "full_compliance"),
                                      {**row("2", "y", "full_compliance"), **bad}])
  with pytest.raises(DataError, match=message) as e:
    judge_labels.read_labels(tmp_path / "l.jsonl")
  assert "l.jsonl" in str(e.value) and "2" in str(e.value)


def test_repeated_key_and_empty_fixture(tmp_path):
  write_labels(tmp_path / "l.jsonl", [row("1", "x", "full_compliance")] * 2)
  with pytest.raises(DataError, match="appears twice"):
    judge_labels.read_labels(tmp_path / "l.jsonl")
  (tmp_path / "e.jsonl").write_text("")
  with pytest.raises(DataError, match="empty"):
    judge_labels.read_labels(tmp_path / "e.jsonl")
