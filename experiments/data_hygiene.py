"""Command line of the data-hygiene report (`alignment.data.hygiene`): loads the training and
evaluation sources, cleans, and writes hygiene_report.{json,md} (and clean.jsonl on request).

  python -m experiments.data_hygiene --data_dir=../shared/data --out=/tmp/hygiene
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

from absl import app, flags, logging

from alignment.data import hygiene, sources
from alignment.data.hygiene_step import HygieneConfig


def define_flags() -> None:
  """The command line: sources, steps and the knobs of `HygieneConfig` (its defaults)."""
  d = HygieneConfig()
  flags.DEFINE_string("data_dir", None, "data directory (default: $ALIGNMENT_DATA_DIR)")
  flags.DEFINE_string("out", None, "directory for hygiene_report.{json,md}", required=True)
  flags.DEFINE_list("train_sources", ["alpaca", "safety_instructions"], "training sources")
  flags.DEFINE_list("eval_sources", list(sources.EVAL_SOURCES), "evaluation sources")
  flags.DEFINE_list("steps", list(hygiene.STEPS),
                    f"steps to run, in order, from {', '.join(hygiene.STEPS)}")
  flags.DEFINE_float("near_dup_threshold", d.near_dup_threshold, "shingle Jaccard threshold")
  flags.DEFINE_integer("shingle_size", d.shingle_size, "bytes per shingle (1..8)")
  flags.DEFINE_integer("num_perm", d.num_perm, "MinHash permutations")
  flags.DEFINE_integer("lsh_bands", d.lsh_bands, "LSH bands (must divide num_perm)")
  flags.DEFINE_integer("overlap_ngram", d.overlap_ngram, "n of the eval-overlap n-grams")
  flags.DEFINE_integer("min_match_words", d.min_match_words,
                       "eval prompts shorter than this match only by equality")
  flags.DEFINE_bool("write_clean", False, "also write the kept examples to clean.jsonl")


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  del argv
  cfg = HygieneConfig(near_dup_threshold=FLAGS.near_dup_threshold,
                      shingle_size=FLAGS.shingle_size, num_perm=FLAGS.num_perm,
                      lsh_bands=FLAGS.lsh_bands, overlap_ngram=FLAGS.overlap_ngram,
                      min_match_words=FLAGS.min_match_words)
  train = [ex for name in FLAGS.train_sources for ex in sources.load(name, FLAGS.data_dir)]
  evals = [ep for name in FLAGS.eval_sources for ep in sources.load(name, FLAGS.data_dir)]
  kept, report = hygiene.clean(train, evals, cfg, FLAGS.steps)
  paths = hygiene.write_report(report, FLAGS.out)
  if FLAGS.write_clean:
    clean_path = pathlib.Path(FLAGS.out) / "clean.jsonl"
    with clean_path.open("w") as fh:
      for ex in kept:
        fh.write(json.dumps(dataclasses.asdict(ex), ensure_ascii=False) + "\n")
    paths += (clean_path,)
  for s in report.steps:
    logging.info("%s: %d -> %d (%d removed)", s.step, s.before, s.after, s.removed)
  print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
  define_flags()
  app.run(main)
