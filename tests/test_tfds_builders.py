"""TFDS ArrayRecord builders read through tfds.data_source and grain, without TensorFlow."""

from __future__ import annotations

import collections
import importlib
import sys

import numpy as np
import pytest

from alignment.data import sources, tfds_builders


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_tensorflow_is_not_installed():
  with pytest.raises(ImportError):
    importlib.import_module("tensorflow")


@pytest.mark.parametrize("name", ["seed_tasks", "xstest", "malicious_instructions"])
def test_roundtrip_keeps_records_and_order(name, data_dir, tfds_dir):
  ds = tfds_builders.data_source(name, data_dir=data_dir, tfds_dir=tfds_dir)
  assert [tfds_builders.to_record(ds[i]) for i in range(len(ds))] == sources.load(name, data_dir)
  assert list(tfds_dir.glob(f"alignment_*/{name}/1.0.0/*.array_record-00000-of-*"))
  assert not list(tfds_dir.rglob("*.tfrecord*"))
  assert "tensorflow" not in sys.modules


def test_hh_train_validation_split(data_dir, tfds_dir):
  pairs = sources.load("hh_harmless", data_dir)
  train = tfds_builders.data_source("hh_harmless", "train", data_dir, tfds_dir)
  val = tfds_builders.data_source("hh_harmless", "validation", data_dir, tfds_dir)
  assert len(train) + len(val) == len(pairs) == 2312
  assert 0.07 < len(val) / len(pairs) < 0.13
  val_records = [tfds_builders.to_record(val[i]) for i in range(len(val))]
  train_prompts = {tfds_builders.to_record(train[i]).prompt for i in range(len(train))}
  assert not train_prompts & {r.prompt for r in val_records}
  assert val_records == [p for p in pairs if tfds_builders.is_validation(p.prompt)]
  assert all(r.margin is None for r in val_records)


def test_grain_dataset_shuffles_deterministically(data_dir, tfds_dir):
  records = sources.load("xstest", data_dir)
  a = list(tfds_builders.grain_dataset("xstest", seed=3, data_dir=data_dir, tfds_dir=tfds_dir))
  b = list(tfds_builders.grain_dataset("xstest", seed=3, data_dir=data_dir, tfds_dir=tfds_dir))
  c = list(tfds_builders.grain_dataset("xstest", seed=4, data_dir=data_dir, tfds_dir=tfds_dir))
  assert a == b and a != c and a != records
  assert collections.Counter(r.id for r in a) == collections.Counter(r.id for r in records)


def test_grain_loader_batches_one_epoch(data_dir, tfds_dir):
  loader = tfds_builders.grain_loader("xstest", 64, ["prompt", "label"], seed=0,
                                      data_dir=data_dir, tfds_dir=tfds_dir)
  batches = list(loader)
  assert [len(b["prompt"]) for b in batches] == [64] * 7 + [2]
  prompts = np.concatenate([b["prompt"] for b in batches]).tolist()
  labels = np.concatenate([b["label"] for b in batches]).tolist()
  records = sources.load("xstest", data_dir)
  assert sorted(zip(prompts, labels)) == sorted((r.prompt, r.label) for r in records)


def test_missing_data_dir_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    tfds_builders.prepare("q_harm", data_dir=tmp_path / "none", tfds_dir=tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="Q-Harm.json"):
    tfds_builders.prepare("q_harm", data_dir=tmp_path, tfds_dir=tmp_path / "tfds")
