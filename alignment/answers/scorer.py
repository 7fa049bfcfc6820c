"""The type of a scorer: a batch of answer records in, one number (or None) per record out.

A scorer sees the whole batch so that a model-based one (a reward model) can batch its forward
passes. None means the scorer does not apply to that record (e.g. a harmfulness model asked
about a safe prompt). The registry of named scorers is `alignment.evaluation.scorers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from alignment.answers.records import AnswerRecord


class Scorer(Protocol):
  """Any callable taking a batch of records and returning one `float | None` per record."""

  def __call__(self, records: Sequence[AnswerRecord], /) -> list[float | None]:
    ...
