"""Hygiene: dedup against a brute-force reference, planted duplicates and eval prompts, reports."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alignment.data import hygiene, sources
from alignment.data.coverage import coverage, coverage_markdown
from alignment.data.duplicates import exact_dedup, near_dedup
from alignment.data.eval_overlap import remove_eval_overlap
from alignment.data.hygiene_step import HygieneConfig, normalize
from alignment.data.minhash import minhash_signatures, shingle_ids
from alignment.data.records import EvalPrompt, InstructionExample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ex(instruction: str, input: str = "", source: str = "t") -> InstructionExample:  # pylint: disable=redefined-builtin
  return InstructionExample(instruction=instruction, input=input, output="o", source=source)


@pytest.fixture(scope="module")
def seed(data_dir):
  return sources.load("seed_tasks", data_dir)


def _shingles(text: str, k: int) -> set[bytes]:
  b = text.encode().ljust(k, b"\0")
  return {b[i:i + k] for i in range(len(b) - k + 1)}


def _jaccard(a: set, b: set) -> float:
  return len(a & b) / len(a | b)


def test_normalize():
  assert normalize("  Hello,\tWORLD!!  it's  ") == "hello world it s"
  assert normalize("Ｆｕｌｌｗｉｄｔｈ") == "fullwidth"  # NFKC


def test_shingles_match_python_reference():
  texts = ["abcdefg", "ab", "", "héllo wörld", "abcdefg"]
  ids, offsets = shingle_ids(texts, 5)
  for i, t in enumerate(texts):
    ref = {int.from_bytes(s, "little") for s in _shingles(t, 5)}
    assert set(ids[offsets[i]:offsets[i + 1]].tolist()) == ref
    assert offsets[i + 1] - offsets[i] == max(len(t.encode()), 5) - 4


def test_minhash_estimates_jaccard():
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(400)]
  base = " ".join(rng.choice(words, 300))
  variants = [base, base[:int(len(base) * 0.9)], base[::-1], " ".join(rng.choice(words, 300))]
  ids, offsets = shingle_ids(variants, 5)
  sig = minhash_signatures(ids, offsets, 256)
  for i, j in itertools.combinations(range(len(variants)), 2):
    true = _jaccard(_shingles(variants[i], 5), _shingles(variants[j], 5))
    assert abs((sig[i] == sig[j]).mean() - true) < 0.1, (i, j, true)


def test_exact_dedup():
  data = [_ex("Write a poem."), _ex("write a POEM!"), _ex("Write a poem.", "about cats"),
          _ex("Write a song.")]
  kept, report = exact_dedup(data)
  assert kept == [data[0], data[2], data[3]]
  assert (report.before, report.removed, report.after) == (4, 1, 3)
  assert report.examples[0]["duplicate_of"] == "Write a poem."


def test_near_dedup_matches_brute_force(seed):
  # Seed tasks are distinct; plant small edits of 20 of them among the 175.
  rng = np.random.default_rng(1)
  planted = []
  for i in rng.choice(len(seed), 20, replace=False):
    ex = seed[int(i)]
    words = ex.instruction.split()
    if len(words) < 8:
      continue
    words[len(words) // 2] = words[len(words) // 2].upper() + ","
    planted.append(InstructionExample(instruction=" ".join(words), input=ex.input,
                                      output="different", source="planted"))
  data = list(seed) + planted
  cfg = HygieneConfig(near_dup_threshold=0.7)
  kept, report = near_dedup(data, cfg)
  # Reference: O(n^2) exact per-field Jaccard, the first of each cluster kept.
  norm = [[normalize(getattr(e, f)) for f in cfg.dedup_fields] for e in data]
  removed_ref = set()
  for j in range(len(data)):
    for i in range(j):
      if i in removed_ref:
        continue
      if all(_jaccard(_shingles(norm[i][f], 5), _shingles(norm[j][f], 5)) >= 0.7
             for f in range(len(cfg.dedup_fields))):
        removed_ref.add(j)
        break
  assert kept == [e for k, e in enumerate(data) if k not in removed_ref]
  assert {e.source for e in data if e not in kept} == {"planted"}
  assert report.removed == len(planted) >= 10
  assert report.removed_by_source == {"planted": len(planted)}
  assert all(e["min_field_jaccard"] >= 0.7 for e in report.examples)


def test_near_dedup_keeps_distinct_tasks_on_one_input():
  passage = "The quick brown fox jumps over the lazy dog near the river bank at dawn."
  data = [_ex("Summarize the paragraph.", passage), _ex("Find the verbs in the paragraph.",
                                                        passage),
          _ex("Summarize the paragraph!", passage)]
  kept, report = near_dedup(data)
  assert kept == data[:2] and report.removed == 1


def test_eval_overlap_finds_planted_prompts(data_dir):
  q_harm = sources.load("q_harm", data_dir)
  cona = sources.load("cona", data_dir)
  long_prompt = next(p for p in cona if len(p.prompt.split()) >= 16)
  short_prompt = next(p for p in q_harm if 5 <= len(p.prompt.split()) < 13)
  clean = [_ex("Write a haiku about autumn leaves."), _ex("Translate 'hello' into French.")]
  planted = [
      _ex("Answer this: " + short_prompt.prompt.upper() + " Be brief."),  # whole short prompt
      _ex("Respond.", "x " + " ".join(long_prompt.prompt.split()[1:14]) + " y"),  # a 13-gram
  ]
  near_miss = _ex(" ".join(short_prompt.prompt.split()[:-1]))  # a short prompt minus one word
  kept, report = remove_eval_overlap(clean + planted + [near_miss], q_harm + cona)
  assert kept == clean + [near_miss]
  assert [e["eval_prompt"] for e in report.examples] == [short_prompt.prompt, long_prompt.prompt]
  assert report.details["eval_prompts_found"] == {"cona": 1, "q_harm": 1}
  # Prompts shorter than min_match_words match only by equality.
  tiny = [EvalPrompt(prompt="Kill it.", source="s")]
  kept, _ = remove_eval_overlap([_ex("Kill it!"), _ex("Kill it softly")], tiny)
  assert kept == [_ex("Kill it softly")]


def test_i_alpaca_is_drawn_from_alpaca(data_dir):
  alpaca = sources.load("alpaca", data_dir)
  evals = sources.load("i_alpaca", data_dir) + sources.load("xstest", data_dir)
  _, report = remove_eval_overlap(alpaca, evals)
  assert report.details["eval_prompts_found"]["i_alpaca"] == 50
  assert report.removed_by_source == {"alpaca": report.removed}


def test_coverage(seed):
  data = list(seed[:10]) + [_ex("q", source="other")]
  cov = coverage(data)
  assert cov["examples"] == 11 and cov["by_source"] == {"seed_tasks": 10, "other": 1}
  assert sum(cov["prompt_words"].values()) == sum(cov["output_words"].values()) == 11
  assert cov["untagged"] == 1 and cov["by_format"] == {"instruction": 11}
  md = coverage_markdown(cov)
  assert "| seed_tasks | 10 |" in md and "| 0-7 |" in md


def test_clean_rejects_unknown_step():
  with pytest.raises(ValueError, match="unknown hygiene step"):
    hygiene.clean([], steps=["dedupe"])
  with pytest.raises(ValueError, match="lsh_bands"):
    HygieneConfig(num_perm=100, lsh_bands=32)


def test_cli_writes_reports(tmp_path, data_dir):
  out = tmp_path / "report"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.data_hygiene", f"--data_dir={data_dir}", f"--out={out}",
       "--train_sources=safety_instructions,seed_tasks", "--eval_sources=q_harm,i_alpaca",
       "--write_clean"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  report = json.loads((out / "hygiene_report.json").read_text())
  steps = {s["step"]: s for s in report["steps"]}
  assert steps["exact_dedup"]["before"] == 2483 + 175
  assert steps["exact_dedup"]["removed"] == 4
  assert report["coverage_after"]["examples"] == steps["eval_overlap"]["after"]
  assert len((out / "clean.jsonl").read_text().splitlines()) == steps["eval_overlap"]["after"]
  md = (out / "hygiene_report.md").read_text()
  assert "## near_dedup" in md and "## Coverage after" in md
