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
    ("configs/dpo.py:tiny", "data.source", ("hh_harmless", "hh_helpful")),
]


def test_a_comma_list_for_a_tuple_key_is_written_as_the_tuple():
  """main rewrites `--config.k=a,b` for every tuple key of every job as ('a', 'b') before
  ml_collections reads it (which would give ('a,b',)); literals and other keys stay."""
  for config_file, key, names in TUPLE_KEYS:
    argv = ["prog", f"--config={config_file}", f"--config.{key}={','.join(names)}",
            f"--config.{key}={names!r}", "--config.seed=3", "--config.workdir=a,b"]
    out = main.spell_tuples(argv)
    assert ast.literal_eval(out[2].split("=", 1)[1]) == names, (config_file, key)
    assert out[3:] == argv[3:] and out[:2] == argv[:2]


def test_a_comma_list_with_an_absolute_path_reaches_the_job_as_a_tuple():
  """End to end through main's flag parsing: a user's file among named sets (README), in
  either spelling, and a path alone."""
  for spelling in ("xstest,/x/probes.csv", "xstest, /x/probes.csv",
                   "('xstest', '/x/probes.csv')"):
    assert shown("configs/evaluate.py:tiny", f"--config.sets={spelling}")["sets"] == (
        "xstest", "/x/probes.csv")
  assert shown("configs/evaluate.py:tiny", "--config.sets=/x/probes.csv")["sets"] == (
      "/x/probes.csv",)
