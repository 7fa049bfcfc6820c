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


def test_unknown_override_key_is_named_with_a_close_match(tmp_path):
  """A misspelt key stops the program with the key's whole path and a suggestion, no traceback,
  found by checking the path against the config (not by reading ml_collections' message)."""
  out = subprocess.run(
      [sys.executable, "-m", "alignment.main", "--config=configs/sft.py:tiny",
       "--config.train.lerning_rate=0.1", f"--config.workdir={tmp_path / 'never'}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  first, *_ = out.stderr.strip().splitlines()
  assert first == ("config error: unknown config key 'train.lerning_rate'. "
                   "Did you mean 'train.learning_rate'?")
  assert not (tmp_path / "never").exists()


def test_unknown_key_walks_the_config():
  config = evaluate_config.get_config("tiny")
  assert main.unknown_key(config, "scoring.harmfulness_kind") is None
  assert main.unknown_key(config, "scorng.batch_size") == (
      "unknown config key 'scorng'. Did you mean 'scoring'?")
  assert main.unknown_key(config, "scoring.xyzzy") == "unknown config key 'scoring.xyzzy'."
  assert main.override_paths(["prog", "--config=x.py", "--config.a.b=1", "--noconfig.c"]) == [
      "a.b", "c"]
