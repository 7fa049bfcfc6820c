"""The refusal classifier against maintainers' labels of our own 270M models' answers.

docs/judge/labels_v1.jsonl (README beside it: who labelled, the rubric, the tune/held-out
split). Classifier changes were made looking at the `tune` half only; this test holds the
`held_out` half to the agreement measured when the fixture was made (docs/REFUSAL_CLASSIFIER.md),
so a phrase-list change that loses agreement on answers it was not tuned on fails here.
"""

import collections
import pathlib

from experiments import judge_labels

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "judge" / "labels_v1.jsonl"

# Measured on the held-out half when the fixture was committed, less a small margin.
MIN_HELD_OUT_ACCURACY = 0.90  # measured 187/206 = 0.908
MIN_HELD_OUT_KAPPA = 0.74  # measured 0.758


def test_fixture_is_large_stratified_and_split():
  rows = judge_labels.read_labels(FIXTURE)
  assert len(rows) >= 300
  splits = collections.Counter(r.split for r in rows)
  assert min(splits.values()) >= 120
  assert len({(r.num_safety, r.format) for r in rows}) >= 6
  assert {"question"} <= {r.format for r in rows}
  assert len({r.set for r in rows}) == 9
  labels = collections.Counter(r.label for r in rows)
  assert labels["full_refusal"] >= 30 and labels["full_compliance"] >= 30


def test_held_out_agreement_does_not_drop():
  rows = [r for r in judge_labels.read_labels(FIXTURE) if r.split == "held_out"]
  a = judge_labels.agreement(rows)
  assert a.accuracy.value >= MIN_HELD_OUT_ACCURACY, a
  assert a.kappa >= MIN_HELD_OUT_KAPPA, a
