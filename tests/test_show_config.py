"""`--show_config`: every key of a config, overrides applied, printed without running the job."""

import ast
import pathlib
import subprocess
import sys

import pytest

from alignment import main, schema
from configs import evaluate as evaluate_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_lines_cover_every_leaf():
  config = evaluate_config.get_config("tiny")
  lines = main.config_lines(config)
  assert "sets = ('malicious_instructions', 'cona', 'controversial', 'physical_safety_unsafe', " \
         "'physical_safety_safe', 'q_harm', 'i_alpaca', 'xstest')" in lines
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


def shown(config_file: str, *overrides: str) -> dict[str, object]:
  """{key: value} as `--show_config` prints the config after main's flag parsing."""
  out = subprocess.run([sys.executable, "-m", "alignment.main", f"--config={config_file}",
                        *overrides, "--show_config"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
  return {k: ast.literal_eval(v) for k, v in (line.split(" = ", 1)
                                                for line in out.stdout.splitlines())}


# A tuple key of every job that has one (lora.targets is checked in test_schema.py).
TUPLE_KEYS = [
    ("configs/evaluate.py:tiny", "sets", ("xstest", "q_harm")),
    ("configs/evaluate.py:tiny", "attacks", ("role_play", "leetspeak")),
    ("configs/evaluate.py:tiny", "attack_sets", ("xstest", "q_harm")),
    ("configs/template_eval.py:tiny", "sets", ("xstest", "q_harm")),
    ("configs/ppo.py:tiny", "prompts.sources", ("alpaca", "hh_harmless")),
    ("configs/ppo.py:tiny", "reward.unsafe_sources", ("alpaca", "hh_harmless")),
    ("configs/rejection_sampling.py:tiny", "data.prompt_source", ("alpaca", "hh_harmless")),
    ("configs/rejection_sampling.py:tiny", "rs.unsafe_sources", ("alpaca", "hh_harmless")),
    ("configs/context_distillation.py:tiny", "data.prompt_source", ("alpaca", "hh_harmless")),
    ("configs/reward.py:tiny", "data.source", ("hh_harmless", "data/pairs.jsonl")),
    ("configs/reward.py:tiny", "combine.unsafe_sources", ("alpaca", "hh_harmless")),
    ("configs/dpo.py:tiny", "data.source", ("hh_harmless", "hh_helpful")),
]


@pytest.mark.parametrize("config_file,key,names", TUPLE_KEYS)
def test_a_tuple_key_takes_a_comma_list_or_a_tuple_on_the_command_line(config_file, key, names):
  """ml_collections reads `a,b` for a tuple field as ('a,b',) and `('a','b')` as the tuple;
  `schema.names` gives the same names from both."""
  joined = shown(config_file, f"--config.{key}={','.join(names)}")[key]
  literal = shown(config_file, f"--config.{key}={names!r}")[key]
  assert joined == (",".join(names),) and literal == names
  assert schema.names(joined) == schema.names(literal) == names


def test_an_absolute_path_in_a_comma_list_needs_the_tuple_spelling():
  """ml_collections cannot read `xstest,/x/probes.csv` as a tuple (README: user files)."""
  assert shown("configs/evaluate.py:tiny", "--config.sets=/x/probes.csv")["sets"] == (
      "/x/probes.csv",)
  assert shown("configs/evaluate.py:tiny", "--config.sets=('xstest', '/x/probes.csv')")[
      "sets"] == ("xstest", "/x/probes.csv")
  out = subprocess.run(
      [sys.executable, "-m", "alignment.main", "--config=configs/evaluate.py:tiny",
       "--config.sets=xstest,/x/probes.csv", "--show_config"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and out.stderr.startswith("config error: ")
  assert "as tuple" in out.stderr and "Traceback" not in out.stderr
