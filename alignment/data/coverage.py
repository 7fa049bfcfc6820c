"""Coverage of a training pool: counts by source, format and tag, and word-length histograms.

The hygiene report shows it before and after cleaning, so what a step removed shows up as a
shift in the pool's make-up.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignment.data.hygiene_step import count_table, example_text
from alignment.data.records import InstructionExample

_LENGTH_BINS = (0, 8, 16, 32, 64, 128, 256, 512, 1024)


def _histogram(values: Sequence[int]) -> dict[str, int]:
  edges = np.array(_LENGTH_BINS[1:])
  counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(_LENGTH_BINS))
  labels = [f"{lo}-{hi - 1}" for lo, hi in zip(_LENGTH_BINS, _LENGTH_BINS[1:])]
  labels.append(f"{_LENGTH_BINS[-1]}+")
  return dict(zip(labels, (int(c) for c in counts)))


def coverage(examples: Sequence[InstructionExample]) -> dict[str, Any]:
  """Counts by source, tag and prompt format, and word-length histograms of prompts/outputs."""
  prompt_words = [len(example_text(ex, ("instruction", "input")).split()) for ex in examples]
  output_words = [len(ex.output.split()) for ex in examples]
  return {
      "examples": len(examples),
      "by_source": dict(collections.Counter(ex.source for ex in examples).most_common()),
      "by_format": dict(collections.Counter(ex.prompt_format for ex in examples).most_common()),
      "by_tag": dict(collections.Counter(t for ex in examples for t in ex.tags).most_common(50)),
      "untagged": sum(not ex.tags for ex in examples),
      "with_input": sum(bool(ex.input) for ex in examples),
      "empty_output": sum(not ex.output for ex in examples),
      "prompt_words": _histogram(prompt_words),
      "output_words": _histogram(output_words),
      "prompt_words_mean": float(np.mean(prompt_words)) if examples else 0.0,
      "output_words_mean": float(np.mean(output_words)) if examples else 0.0,
  }


def coverage_markdown(cov: dict[str, Any], title: str = "Coverage") -> str:
  """A `coverage` result as a Markdown section."""
  lines = [f"## {title}", "", f"{cov['examples']} examples, {cov['with_input']} with input, "
           f"{cov['empty_output']} with empty output, {cov['untagged']} untagged; mean prompt "
           f"{cov['prompt_words_mean']:.1f} words, mean output {cov['output_words_mean']:.1f} "
           "words.", ""]
  for key, name in (("by_source", "source"), ("by_format", "format"), ("by_tag", "tag")):
    if cov[key]:
      lines += count_table(cov[key], name) + [""]
  lines += ["| words | prompts | outputs |", "|---|---:|---:|"]
  lines += [f"| {b} | {cov['prompt_words'][b]} | {cov['output_words'][b]} |"
            for b in cov["prompt_words"]]
  return "\n".join(lines) + "\n"
