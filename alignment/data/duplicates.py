"""Duplicate removal: exact (normalized text equal) and near (shingle Jaccard >= a threshold).

Near duplicates. Texts are normalized (`hygiene_step.normalize`) and cut into byte shingles;
MinHash-LSH (`minhash.py`, `lsh_bands` bands of `num_perm` permutations) proposes candidate
pairs; candidates whose MinHash Jaccard estimate is more than 0.15 below the threshold are
dropped, and each remaining pair's exact shingle Jaccard decides. So the threshold is exact and
MinHash only bounds the work: a pair at Jaccard >= 0.8 is missed only if no band collides
(probability (1 - 0.8**4)**32 < 1e-7 for 32 bands of 4 rows) or its estimate is off by > 3
standard deviations. Two examples are near duplicates when *each* of `dedup_fields`
(instruction, input) has shingle Jaccard >= the threshold (an empty field matches an empty
field). Documents are visited in order and one is removed when it near-duplicates an earlier
*kept* one, so the first of a cluster survives.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignment.data.hygiene_step import (HygieneConfig, StepReport, example_text, normalize,
                                         step_report)
from alignment.data.minhash import lsh_candidates, minhash_signatures, shingle_ids
from alignment.data.records import InstructionExample

_ESTIMATE_MARGIN = 0.15


def exact_dedup(examples: Sequence[InstructionExample], cfg: HygieneConfig = HygieneConfig()
                ) -> tuple[list[InstructionExample], StepReport]:
  """Drops every example whose normalized `dedup_fields` text equals an earlier one's."""
  first: dict[str, int] = {}
  removed: dict[int, dict[str, Any]] = {}
  for i, ex in enumerate(examples):
    key = normalize(example_text(ex, cfg.dedup_fields))
    if key in first:
      j = first[key]
      removed[i] = {"removed": example_text(ex, cfg.dedup_fields), "source": ex.source,
                    "duplicate_of": example_text(examples[j], cfg.dedup_fields),
                    "duplicate_of_source": examples[j].source}
    else:
      first[key] = i
  kept = [ex for i, ex in enumerate(examples) if i not in removed]
  return kept, step_report("exact_dedup", examples, removed, cfg,
                       {"fields": list(cfg.dedup_fields)})


def near_dedup(examples: Sequence[InstructionExample], cfg: HygieneConfig = HygieneConfig()
               ) -> tuple[list[InstructionExample], StepReport]:
  """Drops examples near-duplicating an earlier kept one in every one of `dedup_fields`.

  Comparing field by field keeps, e.g., two different Alpaca tasks on the same long input
  passage, which a Jaccard of the concatenated text would call duplicates. Candidates come from
  MinHash-LSH over the concatenated text (per-field Jaccards >= t imply a concatenated Jaccard
  well above the LSH threshold of ~0.42 for 32 bands of 4 rows).
  """
  if not examples:
    return [], step_report("near_dedup", examples, {}, cfg)
  fields = cfg.dedup_fields
  joined = [normalize(example_text(ex, fields)) for ex in examples]
  ids, offsets = shingle_ids(joined, cfg.shingle_size)
  sig = minhash_signatures(ids, offsets, cfg.num_perm, cfg.minhash_seed)
  candidates = lsh_candidates(sig, cfg.lsh_bands, cfg.minhash_seed)
  per_field = [shingle_ids([normalize(str(getattr(ex, f))) for ex in examples], cfg.shingle_size)
               for f in fields]
  sets: dict[tuple[int, int], frozenset] = {}

  def shingles(f: int, i: int) -> frozenset:
    if (f, i) not in sets:
      fids, foffsets = per_field[f]
      sets[f, i] = frozenset(fids[foffsets[i]:foffsets[i + 1]].tolist())
    return sets[f, i]

  # MinHash's own Jaccard estimate prunes candidates far below the threshold before the exact
  # check; at 128 permutations its standard deviation is <= 0.045, so the margin is > 3 sigma.
  pairs = np.array(sorted(candidates), dtype=np.int64).reshape(-1, 2)
  estimate = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)
  pairs = pairs[estimate >= cfg.near_dup_threshold - _ESTIMATE_MARGIN]
  earlier: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)
  for i, j in pairs.tolist():
    jac = 1.0
    for f in range(len(fields)):
      si, sj = shingles(f, i), shingles(f, j)
      inter = len(si & sj)
      jac = min(jac, inter / (len(si) + len(sj) - inter))
      if jac < cfg.near_dup_threshold:
        break
    if jac >= cfg.near_dup_threshold:
      earlier[j].append((i, jac))
  removed: dict[int, dict[str, Any]] = {}
  for j in sorted(earlier):
    kept = [(i, jac) for i, jac in sorted(earlier[j]) if i not in removed]
    if kept:
      i, jac = max(kept, key=lambda p: p[1])
      removed[j] = {"removed": example_text(examples[j], fields), "source": examples[j].source,
                    "duplicate_of": example_text(examples[i], fields),
                    "duplicate_of_source": examples[i].source, "min_field_jaccard": round(jac, 4)}
  kept_examples = [ex for i, ex in enumerate(examples) if i not in removed]
  details = {"threshold": cfg.near_dup_threshold, "shingle_size": cfg.shingle_size,
             "num_perm": cfg.num_perm, "lsh_bands": cfg.lsh_bands,
             "lsh_candidate_pairs": len(candidates), "verified_pairs": len(pairs),
             "fields": list(fields)}
  return kept_examples, step_report("near_dedup", examples, removed, cfg, details)
