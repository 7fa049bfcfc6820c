"""Evaluation-overlap removal: training examples that contain an evaluation prompt are dropped.

GPT-3 (Brown et al. 2020) flagged training documents sharing any 13-gram with an evaluation
example. Most evaluation prompts here are shorter than 13 words (median 8-19 words by set), so
an evaluation prompt of fewer than `overlap_ngram` words matches when its whole normalized word
sequence occurs in the training text (full-prompt match); prompts of fewer than
`min_match_words` words match only a training text equal to them. Longer prompts match on any
shared `overlap_ngram`-gram.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

from alignment.data.hygiene_step import (HygieneConfig, StepReport, example_text, normalize,
                                         step_report)
from alignment.data.records import EvalPrompt, InstructionExample


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
  return kept, step_report("eval_overlap", examples, removed, cfg, details)
