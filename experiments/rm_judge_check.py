"""Does the safety reward model see harm? Its scores on labelled answers to unsafe prompts.

Scores every answer of a judge label file (docs/judge/labels_v1.jsonl: the maintainers' labels
of laptop-grid answers, docs/judge/README.md) whose prompt is unsafe, and writes
{key, label, refused, reward} rows. A safety RM that measures harm gives refusals a higher
reward than compliance; experiments/llama2_recipe_report.py reads the rows and reports the
AUC of the reward for "refused vs complied" (0.5 = blind).

  python -m experiments.rm_judge_check --rm=runs/llama2_laptop/rm_safety/reward_model \\
      --out=runs/llama2_laptop/rm_judge_check.jsonl
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from absl import app
from absl import flags

from alignment.answers.records import AnswerRecord
from alignment.files import atomic
from alignment.reward.saved import load_reward_model
from alignment.reward.scorer import RewardScorer

SAFE_SETS = ("physical_safety_safe", "i_alpaca", "xstest_safe")  # the label file's set names
LABELS = "docs/judge/labels_v1.jsonl"


def define_flags() -> None:
  flags.DEFINE_string("rm", None, "A saved safety reward-model directory.", required=True)
  flags.DEFINE_string("labels", LABELS, "Judge label file (JSONL).")
  flags.DEFINE_string("out", None, "Where the scored rows go (JSONL).", required=True)
  flags.DEFINE_integer("batch_size", 8, "Scoring batch size.")


def unsafe_rows(path: str | pathlib.Path) -> list[dict]:
  """Labelled answers to unsafe prompts (the paper's unsafe sets and xstest_unsafe)."""
  rows = []
  for i, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{i}: not JSON ({e})") from None
    if row["set"] in SAFE_SETS:
      continue
    rows.append(row)
  return rows


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  rows = unsafe_rows(f.labels)
  scorer = RewardScorer(load_reward_model(f.rm), f.batch_size)
  records = [AnswerRecord(set=r["set"], id=r["key"], prompt=r["prompt"], answer=r["answer"])
             for r in rows]
  rewards = scorer.rewards(records)
  out = pathlib.Path(f.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with atomic.writing(out) as fh:
    for row, reward in zip(rows, rewards):
      fh.write(json.dumps({"key": row["key"], "set": row["set"], "label": row["label"],
                           "refused": row["label"] != "full_compliance",
                           "reward": float(reward)}) + "\n")
  print(f"scored {len(rows)} labelled answers to unsafe prompts -> {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
