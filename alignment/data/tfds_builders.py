"""The data sources as TFDS datasets in ArrayRecord format, read with grain; no TensorFlow.

TFDS 4.9 writes and reads `file_format="array_record"` without TensorFlow installed: example
serialization falls back to its numpy/protobuf path, `tfds.data_source` returns a random-access
`ArrayRecordDataSource`, and grain consumes that directly (`grain.MapDataset.source`, or a
`grain.DataLoader` with an index sampler). What TFDS needs in return: the builders build their
`DatasetInfo` directly (`dataset_info_from_configs` would look for metadata files beside the
module), set `code_path = None` (TFDS 4.9.10 otherwise imports the `importlib_resources`
backport, which it only installs for Python < 3.9, to locate a checksums file), and set
`MANUAL_DOWNLOAD_INSTRUCTIONS`, because the data directory is given to them as
TFDS's `manual_dir`. Text features come back as UTF-8 bytes; `to_record` turns an example back
into the typed record.

One builder per record type, one BuilderConfig per source:
  alignment_instructions/{alpaca,safety_instructions,seed_tasks}   split "train"
  alignment_preferences/{hh_harmless,hh_helpful}                   splits "train", "validation"
  alignment_eval_prompts/{xstest,...,i_alpaca}                     split "test"
HH ships only Anthropic's test split; it is divided by a hash of the prompt (10% validation), so
pairs sharing a prompt land on the same side and the split never changes between builds.
Examples keep file order (`DatasetInfo(disable_shuffling=True)`), so index i of the split is row i of the source.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from alignment.data import sources
from alignment.data.records import EvalPrompt, InstructionExample, PreferencePair

TFDS_DIR_ENV = "ALIGNMENT_TFDS_DIR"
VALIDATION_PERCENT = 10
_MANUAL = ("Point manual_dir (DownloadConfig.manual_dir) at the alignment data directory, "
           "the one $ALIGNMENT_DATA_DIR names (a copy of shared/data; see its README).")


def default_tfds_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(TFDS_DIR_ENV, "~/.cache/alignment/tfds")).expanduser()


def _configs(kind: str) -> list[tfds.core.BuilderConfig]:
  return [tfds.core.BuilderConfig(name=name, description=sources.SOURCES[name].description)
          for name, s in sources.SOURCES.items() if s.kind == kind]


class _SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing: read the configured source from manual_dir."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  # No checksums file or metadata beside the code. (TFDS 4.9.10 also computes the code path of
  # a packaged builder with `importlib_resources`, a backport it only installs for Python < 3.9.)
  code_path = None

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    source = sources.SOURCES[self.builder_config.name]
    return tfds.core.DatasetInfo(builder=self, description=source.description,
                                 features=self._features(), homepage=source.url,
                                 disable_shuffling=True)

  def _records(self, dl_manager: tfds.download.DownloadManager) -> list[Any]:
    return sources.load(self.builder_config.name, dl_manager.manual_dir)


class AlignmentInstructions(_SourceBuilder):
  """Instruction-tuning sources as InstructionExample rows."""

  BUILDER_CONFIGS = _configs("train")

  def _features(self):
    return tfds.features.FeaturesDict({
        "instruction": tfds.features.Text(), "input": tfds.features.Text(),
        "output": tfds.features.Text(), "source": tfds.features.Text(),
        "prompt_format": tfds.features.Text(),
        "tags": tfds.features.Sequence(tfds.features.Text())})

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(self._records(dl_manager))}

  def _generate_examples(self, records: Sequence[InstructionExample]) -> Iterator[tuple[int, dict]]:
    for i, r in enumerate(records):
      yield i, {"instruction": r.instruction, "input": r.input, "output": r.output,
                "source": r.source, "prompt_format": r.prompt_format, "tags": list(r.tags)}


def is_validation(prompt: str) -> bool:
  """The HH validation side: a fixed 10% of prompts by sha256, identical across builds."""
  digest = hashlib.sha256(prompt.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "little") % 100 < VALIDATION_PERCENT


class AlignmentPreferences(_SourceBuilder):
  """Preference sources as PreferencePair rows; margin is NaN where the data has none."""

  BUILDER_CONFIGS = _configs("preference")

  def _features(self):
    return tfds.features.FeaturesDict({
        "prompt": tfds.features.Text(), "chosen": tfds.features.Text(),
        "rejected": tfds.features.Text(), "source": tfds.features.Text(),
        "margin": np.float32})

  def _split_generators(self, dl_manager):
    records = self._records(dl_manager)
    val = [is_validation(r.prompt) for r in records]
    return {"train": self._generate_examples(records, [not v for v in val]),
            "validation": self._generate_examples(records, val)}

  def _generate_examples(self, records: Sequence[PreferencePair], keep: Sequence[bool]
                         ) -> Iterator[tuple[int, dict]]:
    for i, (r, k) in enumerate(zip(records, keep)):
      if k:
        yield i, {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected,
                  "source": r.source, "margin": np.nan if r.margin is None else r.margin}


class AlignmentEvalPrompts(_SourceBuilder):
  """Evaluation sets as EvalPrompt rows; label "" means the set gives none."""

  BUILDER_CONFIGS = _configs("eval")

  def _features(self):
    return tfds.features.FeaturesDict({
        "prompt": tfds.features.Text(), "source": tfds.features.Text(),
        "id": tfds.features.Text(), "label": tfds.features.Text(),
        "tags": tfds.features.Sequence(tfds.features.Text())})

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples(self._records(dl_manager))}

  def _generate_examples(self, records: Sequence[EvalPrompt]) -> Iterator[tuple[int, dict]]:
    for i, r in enumerate(records):
      yield i, {"prompt": r.prompt, "source": r.source, "id": r.id, "label": r.label or "",
                "tags": list(r.tags)}


BUILDERS: dict[str, type[_SourceBuilder]] = {
    "train": AlignmentInstructions, "preference": AlignmentPreferences,
    "eval": AlignmentEvalPrompts}
DEFAULT_SPLIT = {"train": "train", "preference": "train", "eval": "test"}


def builder(name: str, tfds_dir: str | os.PathLike | None = None) -> _SourceBuilder:
  """The (unprepared) TFDS builder of source `name`, writing ArrayRecord under `tfds_dir`."""
  cls = BUILDERS[sources.get_source(name).kind]
  return cls(config=name, data_dir=str(tfds_dir or default_tfds_dir()),
             file_format="array_record")


def prepare(name: str, data_dir: str | os.PathLike | None = None,
            tfds_dir: str | os.PathLike | None = None) -> _SourceBuilder:
  """Builds source `name` into ArrayRecord files once (a no-op when already built)."""
  b = builder(name, tfds_dir)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(sources.resolve_data_dir(data_dir))))
  return b


def data_source(name: str, split: str | None = None, data_dir: str | os.PathLike | None = None,
                tfds_dir: str | os.PathLike | None = None) -> Sequence[dict[str, Any]]:
  """A random-access TFDS data source (ArrayRecord) of source `name`, built if needed."""
  prepare(name, data_dir, tfds_dir)
  kind = sources.get_source(name).kind
  return tfds.data_source(f"{BUILDERS[kind].name}/{name}", split=split or DEFAULT_SPLIT[kind],
                          data_dir=str(tfds_dir or default_tfds_dir()), download=False,
                          builder_kwargs={"file_format": "array_record"})


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def to_record(example: dict[str, Any]) -> InstructionExample | PreferencePair | EvalPrompt:
  """The typed record of one decoded TFDS example (bytes -> str, NaN margin -> None)."""
  if "instruction" in example:
    return InstructionExample(
        instruction=_text(example["instruction"]), input=_text(example["input"]),
        output=_text(example["output"]), source=_text(example["source"]),
        prompt_format=_text(example["prompt_format"]),
        tags=tuple(_text(t) for t in example["tags"]))
  if "chosen" in example:
    margin = float(example["margin"])
    return PreferencePair(prompt=_text(example["prompt"]), chosen=_text(example["chosen"]),
                          rejected=_text(example["rejected"]), source=_text(example["source"]),
                          margin=None if math.isnan(margin) else margin)
  label = _text(example["label"])
  return EvalPrompt(prompt=_text(example["prompt"]), source=_text(example["source"]),
                    id=_text(example["id"]), label=label or None,
                    tags=tuple(_text(t) for t in example["tags"]))


def grain_dataset(name: str, split: str | None = None, *, seed: int | None = None,
                  data_dir: str | os.PathLike | None = None,
                  tfds_dir: str | os.PathLike | None = None) -> grain.MapDataset:
  """A grain MapDataset of typed records, shuffled with `seed` when one is given."""
  ds = grain.MapDataset.source(data_source(name, split, data_dir, tfds_dir))
  if seed is not None:
    ds = ds.shuffle(seed=seed)
  return ds.map(to_record)


class _TextFields(grain.transforms.Map):
  """Decoded text fields only, so grain's Batch can stack them into numpy string arrays."""

  def __init__(self, fields: Sequence[str]):
    self._fields = tuple(fields)

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    return {f: np.asarray(_text(element[f])) for f in self._fields}


def grain_loader(name: str, batch_size: int, fields: Sequence[str], split: str | None = None, *,
                 seed: int = 0, num_epochs: int | None = 1, shuffle: bool = True,
                 data_dir: str | os.PathLike | None = None,
                 tfds_dir: str | os.PathLike | None = None, worker_count: int = 0
                 ) -> grain.DataLoader:
  """A grain DataLoader yielding {field: [batch] str array} batches of source `name`."""
  src = data_source(name, split, data_dir, tfds_dir)
  sampler = grain.samplers.IndexSampler(len(src), shuffle=shuffle, seed=seed,
                                        num_epochs=num_epochs)
  return grain.DataLoader(data_source=src, sampler=sampler, worker_count=worker_count,
                          operations=[_TextFields(fields),
                                      grain.transforms.Batch(batch_size, drop_remainder=False)])
