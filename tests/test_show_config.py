"""`--show_config`: every key of a config, overrides applied, printed without running the job."""

import pathlib
import subprocess
import sys

from alignment import main
from configs import evaluate as evaluate_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_lines_cover_every_leaf():
  config = evaluate_config.get_config("tiny")
  lines = main.config_lines(config)
  assert "sets = 'malicious_instructions,cona,controversial,physical_safety_unsafe," \
         "physical_safety_safe,q_harm,i_alpaca,xstest'" in lines
  assert "columns = ''" in lines and "model.preset = 'tiny_gemma3'" in lines
  assert "scoring.harmfulness_kind = 'probability'" in lines
  def count(tree):
    return sum(count(v) if isinstance(v, dict) else 1 for v in tree.values())
  assert len(lines) == count(config.to_dict())


def test_show_config_prints_overrides_and_runs_nothing(tmp_path):
  workdir = tmp_path / "never"
  out = subprocess.run(
      [sys.executable, "-m", "alignment.main", "--config=configs/sft.py:tiny",
       "--config.data.base_source=/x/mine.jsonl", "--config.data.columns=q:prompt,a:completion",
       f"--config.workdir={workdir}", "--show_config"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
  lines = out.stdout.splitlines()
  assert "data.base_source = '/x/mine.jsonl'" in lines
  assert "data.columns = 'q:prompt,a:completion'" in lines
  assert "job = 'sft'" in lines and not workdir.exists()
