"""Training-data hygiene: exact and near-duplicate removal, evaluation-overlap removal, coverage.

Each step is a function returning the kept examples and a `StepReport` (how many were removed,
by source, with examples of what and why), and a step of the CLI, which writes the reports as
JSON and Markdown:

  python -m alignment.data.hygiene --data_dir=../shared/data --out=/tmp/hygiene

Near duplicates. Texts are normalized (NFKC, case-folded, punctuation to spaces, whitespace
collapsed) and cut into character shingles of `shingle_size` bytes (<= 8, so each shingle packs
losslessly into a uint64). MinHash signatures are computed with numpy over all shingles at once
(multiply-shift hashing, `num_perm` permutations); LSH banding (`lsh_bands` bands) proposes
candidate pairs; candidates whose MinHash Jaccard estimate is more than 0.15 below the threshold
are dropped, and each remaining pair's exact shingle Jaccard decides. So the threshold is exact
and MinHash only bounds the work: a pair at Jaccard >= 0.8 is missed only if no band collides
(probability (1 - 0.8**4)**32 < 1e-7 for 32 bands of 4 rows) or its estimate is off by > 3
standard deviations. Two examples
are near duplicates when *each* of `dedup_fields` (instruction, input) has shingle Jaccard >=
the threshold (an empty field matches an empty field). Documents are visited in order and one
is removed when it near-duplicates an earlier *kept* one, so the first of a cluster survives. (Implemented with numpy rather than taking
`datasketch` as a dependency: it is a few dozen lines, vectorized over all shingles at once, and
the packed-byte shingles need no string hashing, which Python salts per process.)

Evaluation overlap. GPT-3 (Brown et al. 2020) flagged training documents sharing any 13-gram
with an evaluation example. Most evaluation prompts here are shorter than 13 words (median 8-19
words by set), so an evaluation prompt of fewer than `overlap_ngram` words matches when its whole
normalized word sequence occurs in the training text (full-prompt match); prompts of fewer than
`min_match_words` words match only a training text equal to them. Longer prompts match on any
shared `overlap_ngram`-gram.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import pathlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from alignment.data.records import EvalPrompt, InstructionExample
from alignment.data import sources

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_ESTIMATE_MARGIN = 0.15
_LENGTH_BINS = (0, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class HygieneConfig:
  """Knobs of the hygiene steps (see the module docstring for what each means)."""

  dedup_fields: tuple[str, ...] = ("instruction", "input")  # the text that identifies an example
  near_dup_threshold: float = 0.8  # shingle Jaccard at or above which two texts are duplicates
  shingle_size: int = 5  # bytes per shingle, 1..8
  num_perm: int = 128
  lsh_bands: int = 32  # must divide num_perm
  minhash_seed: int = 0
  overlap_ngram: int = 13
  min_match_words: int = 3
  overlap_fields: tuple[str, ...] = ("instruction", "input")
  max_report_examples: int = 10

  def __post_init__(self):
    if not 1 <= self.shingle_size <= 8:
      raise ValueError(f"shingle_size must be in 1..8, got {self.shingle_size}")
    if self.num_perm % self.lsh_bands:
      raise ValueError(f"lsh_bands ({self.lsh_bands}) must divide num_perm ({self.num_perm})")
    if not 0.0 < self.near_dup_threshold <= 1.0:
      raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
    if self.overlap_ngram < 1 or self.min_match_words < 1:
      raise ValueError("overlap_ngram and min_match_words must be positive")


@dataclasses.dataclass
class StepReport:
  """What one hygiene step removed, and why, with a few examples."""

  step: str
  before: int
  removed: int
  removed_by_source: dict[str, int]
  examples: list[dict[str, Any]]
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def after(self) -> int:
    return self.before - self.removed

  def to_dict(self) -> dict[str, Any]:
    return {"step": self.step, "before": self.before, "removed": self.removed,
            "after": self.after, "removed_by_source": self.removed_by_source,
            "details": self.details, "examples": self.examples}


def normalize(text: str) -> str:
  """Case-folded, NFKC, punctuation as spaces, whitespace collapsed: what counts as 'the same'."""
  return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def example_text(ex: InstructionExample, fields: Sequence[str]) -> str:
  return "\n".join(str(getattr(ex, f)) for f in fields if getattr(ex, f))


def _report(step: str, examples: Sequence[InstructionExample], removed: dict[int, dict[str, Any]],
            cfg: HygieneConfig, details: dict[str, Any] | None = None) -> StepReport:
  by_source = collections.Counter(examples[i].source for i in removed)
  shown = [removed[i] for i in sorted(removed)[:cfg.max_report_examples]]
  return StepReport(step, len(examples), len(removed), dict(sorted(by_source.items())), shown,
                    details or {})


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
  return kept, _report("exact_dedup", examples, removed, cfg,
                       {"fields": list(cfg.dedup_fields)})


# ---------------------------------------------------------------------------------------------
# MinHash.


def shingle_ids(texts: Sequence[str], shingle_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids, offsets): uint64 ids of every byte shingle of every text, and each text's slice.

  A text shorter than `shingle_size` bytes is zero-padded so that it has exactly one shingle.
  """
  k = shingle_size
  encoded = [t.encode("utf-8").ljust(k, b"\0") for t in texts]
  lengths = np.array([len(b) for b in encoded], dtype=np.int64)
  buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)
  weights = np.uint64(256) ** np.arange(k, dtype=np.uint64)
  windows = np.lib.stride_tricks.sliding_window_view(buf, k)
  ids = (windows.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
  starts = np.cumsum(lengths) - lengths
  counts = lengths - k + 1
  # A window is a shingle of its text when it starts at most len - k bytes into the text.
  text_of = np.repeat(np.arange(len(texts)), lengths)[:len(ids)]
  keep = np.arange(len(ids)) - starts[text_of] < counts[text_of]
  offsets = np.concatenate([[0], np.cumsum(counts)])
  return ids[keep], offsets


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: spreads the (mostly low) bits of packed shingles over 64 bits."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def minhash_signatures(ids: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int = 0,
                       chunk: int = 1 << 13) -> np.ndarray:
  """[num_texts, num_perm] uint32 MinHash signatures; h_p(x) = (a_p * x + b_p) mod 2^64 >> 32."""
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
  b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
  mixed = _mix64(ids)
  num_texts = len(offsets) - 1
  sig = np.empty((num_texts, num_perm), dtype=np.uint32)
  buf = np.empty((chunk, num_perm), dtype=np.uint64)
  t = 0
  with np.errstate(over="ignore"):
    while t < num_texts:
      # A block of whole texts holding at most `chunk` shingles (or one longer text).
      end = max(int(np.searchsorted(offsets, offsets[t] + chunk, side="right")) - 1, t + 1)
      lo, hi = offsets[t], offsets[end]
      h = buf[:hi - lo] if hi - lo <= chunk else np.empty((hi - lo, num_perm), np.uint64)
      np.multiply(mixed[lo:hi, None], a[None, :], out=h)
      h += b
      h >>= np.uint64(32)
      sig[t:end] = np.minimum.reduceat(h, offsets[t:end] - lo, axis=0)
      t = end
  return sig


def _lsh_candidates(sig: np.ndarray, bands: int, seed: int = 0) -> set[tuple[int, int]]:
  """Pairs (i < j) whose signatures agree on all rows of at least one band.

  Each band's rows are folded into one uint64 key; a rare key collision only adds a candidate,
  which the exact Jaccard check then rejects.
  """
  rows = sig.shape[1] // bands
  mult = np.random.default_rng(seed + 1).integers(1, 2**63, size=rows, dtype=np.uint64) | 1
  pairs: set[tuple[int, int]] = set()
  with np.errstate(over="ignore"):
    for band in range(bands):
      keys = (sig[:, band * rows:(band + 1) * rows].astype(np.uint64) * mult).sum(
          axis=1, dtype=np.uint64)
      order = np.argsort(keys, kind="stable")
      sorted_keys = keys[order]
      starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
      sizes = np.diff(np.r_[starts, len(keys)])
      for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
        members = sorted(order[start:start + size].tolist())
        pairs.update(itertools.combinations(members, 2))
  return pairs


def near_dedup(examples: Sequence[InstructionExample], cfg: HygieneConfig = HygieneConfig()
               ) -> tuple[list[InstructionExample], StepReport]:
  """Drops examples near-duplicating an earlier kept one in every one of `dedup_fields`.

  Comparing field by field keeps, e.g., two different Alpaca tasks on the same long input
  passage, which a Jaccard of the concatenated text would call duplicates. Candidates come from
  MinHash-LSH over the concatenated text (per-field Jaccards >= t imply a concatenated Jaccard
  well above the LSH threshold of ~0.42 for 32 bands of 4 rows).
  """
  if not examples:
    return [], _report("near_dedup", examples, {}, cfg)
  fields = cfg.dedup_fields
  joined = [normalize(example_text(ex, fields)) for ex in examples]
  ids, offsets = shingle_ids(joined, cfg.shingle_size)
  sig = minhash_signatures(ids, offsets, cfg.num_perm, cfg.minhash_seed)
  candidates = _lsh_candidates(sig, cfg.lsh_bands, cfg.minhash_seed)
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
  return kept_examples, _report("near_dedup", examples, removed, cfg, details)


# ---------------------------------------------------------------------------------------------
# Evaluation overlap.


def _eval_patterns(eval_prompts: Iterable[EvalPrompt], cfg: HygieneConfig
                   ) -> tuple[dict[tuple[str, ...], list[EvalPrompt]], dict[str, EvalPrompt]]:
  """Word sequences whose occurrence flags a training text, and prompts needing equality."""
  patterns: dict[tuple[str, ...], list[EvalPrompt]] = collections.defaultdict(list)
  whole: dict[str, EvalPrompt] = {}
  n = cfg.overlap_ngram
  for ep in eval_prompts:
    words = tuple(normalize(ep.prompt).split())
    if len(words) < cfg.min_match_words:
      whole.setdefault(" ".join(words), ep)
    elif len(words) < n:
      patterns[words].append(ep)
    else:
      for s in range(len(words) - n + 1):
        patterns[words[s:s + n]].append(ep)
  return patterns, whole


def remove_eval_overlap(examples: Sequence[InstructionExample], eval_prompts: Sequence[EvalPrompt],
                        cfg: HygieneConfig = HygieneConfig()
                        ) -> tuple[list[InstructionExample], StepReport]:
  """Drops training examples that contain an evaluation prompt (see the module docstring)."""
  patterns, whole = _eval_patterns(eval_prompts, cfg)
  lengths_by_first: dict[str, set[int]] = collections.defaultdict(set)
  for p in patterns:
    lengths_by_first[p[0]].add(len(p))
  removed: dict[int, dict[str, Any]] = {}
  hit_prompts: dict[str, set[str]] = collections.defaultdict(set)
  for i, ex in enumerate(examples):
    text = normalize(example_text(ex, cfg.overlap_fields))
    match: EvalPrompt | None = whole.get(text)
    matched_words = text
    if match is None:
      words = text.split()
      for s, w in enumerate(words):
        for length in lengths_by_first.get(w, ()):
          seq = tuple(words[s:s + length])
          if seq in patterns:
            match, matched_words = patterns[seq][0], " ".join(seq)
            break
        if match is not None:
          break
    if match is not None:
      hit_prompts[match.source].add(match.prompt)
      removed[i] = {"removed": example_text(ex, cfg.overlap_fields), "source": ex.source,
                    "eval_source": match.source, "eval_prompt": match.prompt,
                    "matched": matched_words}
  kept = [ex for i, ex in enumerate(examples) if i not in removed]
  eval_counts = collections.Counter(ep.source for ep in eval_prompts)
  details = {"overlap_ngram": cfg.overlap_ngram, "min_match_words": cfg.min_match_words,
             "fields": list(cfg.overlap_fields),
             "eval_prompts_found": {s: len(hit_prompts.get(s, ())) for s in sorted(eval_counts)},
             "eval_prompts_total": dict(sorted(eval_counts.items()))}
  return kept, _report("eval_overlap", examples, removed, cfg, details)


# ---------------------------------------------------------------------------------------------
# Coverage.


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


def _table(counts: dict[str, Any], key: str) -> list[str]:
  rows = [f"| {key} | count |", "|---|---:|"]
  rows += [f"| {k} | {v} |" for k, v in counts.items()]
  return rows


def coverage_markdown(cov: dict[str, Any], title: str = "Coverage") -> str:
  lines = [f"## {title}", "", f"{cov['examples']} examples, {cov['with_input']} with input, "
           f"{cov['empty_output']} with empty output, {cov['untagged']} untagged; mean prompt "
           f"{cov['prompt_words_mean']:.1f} words, mean output {cov['output_words_mean']:.1f} "
           "words.", ""]
  for key, name in (("by_source", "source"), ("by_format", "format"), ("by_tag", "tag")):
    if cov[key]:
      lines += _table(cov[key], name) + [""]
  lines += ["| words | prompts | outputs |", "|---|---:|---:|"]
  lines += [f"| {b} | {cov['prompt_words'][b]} | {cov['output_words'][b]} |"
            for b in cov["prompt_words"]]
  return "\n".join(lines) + "\n"


def _clip(text: str, n: int = 160) -> str:
  text = " ".join(text.split())
  return text if len(text) <= n else text[:n - 1] + "…"


def step_markdown(report: StepReport) -> str:
  lines = [f"## {report.step}", "", f"{report.before} -> {report.after} "
           f"({report.removed} removed)", ""]
  if report.removed_by_source:
    lines += _table(report.removed_by_source, "removed from source") + [""]
  if report.details:
    lines += ["```", json.dumps(report.details, indent=1, ensure_ascii=False), "```", ""]
  for ex in report.examples:
    reason = {k: v for k, v in ex.items() if k not in ("removed", "source")}
    why = "; ".join(f"{k}: {_clip(str(v))}" for k, v in reason.items())
    lines.append(f"- [{ex['source']}] {_clip(ex['removed'])}  \n  ({why})")
  return "\n".join(lines) + "\n"


@dataclasses.dataclass
class HygieneReport:
  steps: list[StepReport]
  coverage_before: dict[str, Any]
  coverage_after: dict[str, Any]
  config: dict[str, Any]

  def to_dict(self) -> dict[str, Any]:
    return {"config": self.config, "steps": [s.to_dict() for s in self.steps],
            "coverage_before": self.coverage_before, "coverage_after": self.coverage_after}

  def to_markdown(self) -> str:
    parts = ["# Data hygiene report", ""]
    parts += [step_markdown(s) for s in self.steps]
    parts += [coverage_markdown(self.coverage_before, "Coverage before"),
              coverage_markdown(self.coverage_after, "Coverage after")]
    return "\n".join(parts)


STEPS = ("exact_dedup", "near_dedup", "eval_overlap")


def clean(examples: Sequence[InstructionExample], eval_prompts: Sequence[EvalPrompt] = (),
          cfg: HygieneConfig = HygieneConfig(), steps: Sequence[str] = STEPS
          ) -> tuple[list[InstructionExample], HygieneReport]:
  """Runs the chosen steps in order; the report counts every removal."""
  unknown = [s for s in steps if s not in STEPS]
  if unknown:
    raise ValueError(f"unknown hygiene step(s) {unknown}; known: {', '.join(STEPS)}")
  kept = list(examples)
  reports = []
  for step in steps:
    if step == "exact_dedup":
      kept, rep = exact_dedup(kept, cfg)
    elif step == "near_dedup":
      kept, rep = near_dedup(kept, cfg)
    else:
      kept, rep = remove_eval_overlap(kept, eval_prompts, cfg)
    reports.append(rep)
  return kept, HygieneReport(reports, coverage(examples), coverage(kept),
                             dataclasses.asdict(cfg))


def write_report(report: HygieneReport, out_dir: str | pathlib.Path) -> tuple[pathlib.Path, ...]:
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  js, md = out / "hygiene_report.json", out / "hygiene_report.md"
  js.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
  md.write_text(report.to_markdown())
  return js, md


def _main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  cfg = HygieneConfig(near_dup_threshold=f.near_dup_threshold, shingle_size=f.shingle_size,
                      num_perm=f.num_perm, lsh_bands=f.lsh_bands, overlap_ngram=f.overlap_ngram,
                      min_match_words=f.min_match_words)
  train = [ex for name in f.train_sources for ex in sources.load(name, f.data_dir)]
  evals = [ep for name in f.eval_sources for ep in sources.load(name, f.data_dir)]
  kept, report = clean(train, evals, cfg, f.steps)
  paths = write_report(report, f.out)
  if f.write_clean:
    clean_path = pathlib.Path(f.out) / "clean.jsonl"
    with clean_path.open("w") as fh:
      for ex in kept:
        fh.write(json.dumps(dataclasses.asdict(ex), ensure_ascii=False) + "\n")
    paths += (clean_path,)
  for s in report.steps:
    logging.info("%s: %d -> %d (%d removed)", s.step, s.before, s.after, s.removed)
  print("\n".join(str(p) for p in paths))


def main() -> None:
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  d = HygieneConfig()
  flags.DEFINE_string("data_dir", None, "data directory (default: $ALIGNMENT_DATA_DIR)")
  flags.DEFINE_string("out", None, "directory for hygiene_report.{json,md}", required=True)
  flags.DEFINE_list("train_sources", ["alpaca", "safety_instructions"], "training sources")
  flags.DEFINE_list("eval_sources", list(sources.EVAL_SOURCES), "evaluation sources")
  flags.DEFINE_list("steps", list(STEPS), f"steps to run, in order, from {', '.join(STEPS)}")
  flags.DEFINE_float("near_dup_threshold", d.near_dup_threshold, "shingle Jaccard threshold")
  flags.DEFINE_integer("shingle_size", d.shingle_size, "bytes per shingle (1..8)")
  flags.DEFINE_integer("num_perm", d.num_perm, "MinHash permutations")
  flags.DEFINE_integer("lsh_bands", d.lsh_bands, "LSH bands (must divide num_perm)")
  flags.DEFINE_integer("overlap_ngram", d.overlap_ngram, "n of the eval-overlap n-grams")
  flags.DEFINE_integer("min_match_words", d.min_match_words,
                       "eval prompts shorter than this match only by equality")
  flags.DEFINE_bool("write_clean", False, "also write the kept examples to clean.jsonl")
  app.run(_main)


if __name__ == "__main__":
  main()
