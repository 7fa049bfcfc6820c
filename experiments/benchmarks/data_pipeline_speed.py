"""Throughput of the SFT data pipeline on the real Alpaca data with the real Gemma tokenizer.

    python -m experiments.benchmarks.data_pipeline_speed [--limit=N] [--max_length=512]

Prints, for each phase, examples/s and tokens/s (tokens = real tokens, padding excluded):
  tokenize      records -> token ids + loss masks (done once, up front, by `make_batches`)
  padded epoch  one epoch of bucketed, padded batches through grain
  packed epoch  one epoch of first-fit packed batches through grain
and what fraction of each batch's slots hold real tokens. Data: $ALIGNMENT_DATA_DIR/alpaca.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time

from absl import app, flags

from alignment.checkpoints.embedded import load_embedded_tokenizer
from alignment.data import sources
from alignment.data.pipeline import PipelineConfig, batch_tokenized, tokenize_records
from alignment.prompts.templates import get_template

_LIMIT = flags.DEFINE_integer("limit", 0, "use only the first N Alpaca examples (0: all)")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 512, "tokens per example / packed row")
_BATCH = flags.DEFINE_integer("batch_size", 32, "global batch size")
_TEMPLATE = flags.DEFINE_string("template", "alpaca", "prompt template: alpaca or gemma_chat")
_THREADS = flags.DEFINE_integer("num_threads", 1, "grain threads building batches")


class _Clock:
  """Wall and process CPU seconds: on a shared machine the CPU figure is the steadier one."""

  def __enter__(self):
    self.wall, self.cpu = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.wall
    self.cpu = time.process_time() - self.cpu


def _epoch(batches) -> tuple[int, int, int, int]:
  """Drains one epoch; returns batches, examples, real tokens, token slots."""
  epoch = batches.epoch
  n = examples = real = slots = 0
  for batch in batches:
    if batches.epoch != epoch:
      break  # this batch already belongs to the next epoch
    n += 1
    examples += int(batch["segment_ids"].max(axis=1).sum())  # segments are numbered 1..k
    real += int(batch["input_mask"].sum())
    slots += batch["tokens"].size
  return n, examples, real, slots


def _line(name: str, clock: _Clock, examples: int, tokens: int, extra: str = "") -> None:
  print(f"{name:<13} wall {clock.wall:6.2f} s: {examples / clock.wall:8,.0f} examples/s "
        f"{tokens / clock.wall:10,.0f} tokens/s | cpu {clock.cpu:6.2f} s: "
        f"{examples / clock.cpu:8,.0f} examples/s {tokens / clock.cpu:10,.0f} tokens/s  {extra}")


def main(argv) -> None:
  del argv
  tokenizer = load_embedded_tokenizer()
  records = sources.load("alpaca")
  if _LIMIT.value:
    records = records[:_LIMIT.value]
  kept = [r for r in records if r.output.strip()]  # Alpaca has 28 empty outputs
  print(f"alpaca: {len(records)} records, {len(records) - len(kept)} with empty output dropped; "
        f"tokenizer {tokenizer}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  config = PipelineConfig(max_length=_MAX_LENGTH.value, batch_size=_BATCH.value, seed=0,
                          skip_long_prompts=True, num_threads=_THREADS.value)
  template = get_template(_TEMPLATE.value)

  with _Clock() as clock:
    tokenized, s = tokenize_records(kept, tokenizer, template, config)
  _line("tokenize", clock, s.examples + s.skipped, s.tokens,
        f"({s.truncated} truncated, {s.skipped} prompts too long skipped, "
        f"{s.tokens / max(s.examples, 1):.0f} tokens/example)")

  with batch_tokenized(tokenized, config, tokenizer.pad_id, s) as padded, _Clock() as clock:
    n, examples, real, slots = _epoch(padded)
  _line("padded epoch", clock, examples, real,
        f"({n} batches, {real / slots:.1%} of slots real)")

  with batch_tokenized(tokenized, dataclasses.replace(config, packing=True),
                       tokenizer.pad_id, s) as packed, _Clock() as clock:
    n, examples, real, slots = _epoch(packed)
  _line("packed epoch", clock, examples, real,
        f"({n} batches of {config.batch_size} rows, {real / slots:.1%} of slots real)")


if __name__ == "__main__":
  app.run(main)
