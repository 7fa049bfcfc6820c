"""Sequence packing: several tokenized examples share one fixed-length row.

Packing removes most padding from SFT batches of short, uneven examples (Alpaca's median is a
few hundred tokens). Each row carries `segment_ids` (1, 2, ... per packed example, 0 on
padding) and `positions` that restart at 0 for every segment; with
`alignment.model.masks.segment_causal_mask(segment_ids)` attention never crosses segments, so a
packed example gets the same logits as it would alone.

The packing itself is grain's `FirstFitPackIterDataset` (greedy first fit over a window of
`rows` bins, then all bins are emitted); this module only truncates examples to the row length
(grain refuses longer ones), counts those truncations, and renames grain's output fields to the
batch layout the trainers use.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from alignment.data.tokenize import Example


def truncate_examples(examples: Sequence[Example], row_length: int
                      ) -> tuple[list[Example], int]:
  """Cuts every example to `row_length` tokens; returns them and how many were cut."""
  if row_length < 1:
    raise ValueError(f"row_length must be positive, got {row_length}")
  out, cut = [], 0
  for example in examples:
    if len(example["tokens"]) > row_length:
      cut += 1
      example = {k: v[:row_length] for k, v in example.items()}
    out.append(example)
  return out, cut


def _rename(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  segment_ids = row["tokens_segment_ids"]
  return {
      "tokens": row["tokens"].astype(np.int32),
      "positions": row["tokens_positions"].astype(np.int32),
      "segment_ids": segment_ids.astype(np.int32),
      "loss_mask": row["loss_mask"].astype(np.float32),
      "input_mask": segment_ids != 0,
  }


def pack(examples: grain.IterDataset, row_length: int, rows: int, pad_id: int = 0
         ) -> grain.IterDataset:
  """Packs a stream of examples (each at most `row_length` long) into rows, first fit.

  `rows` bins are filled at a time; an example goes into the first bin with room, and when one
  fits in none, all `rows` bins are emitted (in order) and a new window starts with it. Use the
  global batch size for `rows` so that every batch is one packing window. Yields dicts with
  tokens, positions, segment_ids (int32 [row_length]), loss_mask (float32), input_mask (bool).
  """
  packed = grain.experimental.FirstFitPackIterDataset(
      examples,
      length_struct={"tokens": row_length, "loss_mask": row_length},
      num_packing_bins=rows,
      shuffle_bins=False,  # rows are already in shuffled-example order; keep it reproducible
      meta_features=("loss_mask",),  # packed alongside tokens, needs no ids of its own
      padding_struct={"tokens": pad_id, "loss_mask": 0.0},
  )
  return packed.map(_rename)


def pack_examples(examples: Sequence[Example], row_length: int, rows: int, pad_id: int = 0
                  ) -> tuple[list[dict[str, np.ndarray]], int]:
  """Packs a list of examples in order (truncating long ones); returns rows and the cut count."""
  if not examples:
    raise ValueError("cannot pack an empty list of examples")
  examples, cut = truncate_examples(examples, row_length)
  stream = grain.MapDataset.source(examples).to_iter_dataset()
  return list(pack(stream, row_length, rows, pad_id)), cut
