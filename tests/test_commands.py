"""experiments/commands.py: a config built in Python becomes a command line that main reads
back as the same config."""

import ast
import subprocess

import pytest

from configs import evaluate as evaluate_config
from configs import ppo as ppo_config
from experiments import commands


def test_overrides_are_the_differences_from_the_preset():
  preset = ppo_config.get_config("tiny")
  config = ppo_config.get_config("tiny")
  assert commands.overrides(config, preset) == []
  config.prompts.sources = ("alpaca", "hh_harmless")
  config.train.iterations = 2
  assert commands.overrides(config, preset) == [
      "--config.prompts.sources=('alpaca', 'hh_harmless')", "--config.train.iterations=2"]
  config.model.checkpoint = None
  with pytest.raises(ValueError, match="config.model.checkpoint: 'random' -> None"):
    commands.overrides(config, preset)


def test_a_command_reads_back_as_the_config_it_came_from(tmp_path):
  """Tuples of names (an absolute path among them, one name, none) survive main's parsing."""
  config = evaluate_config.get_config("tiny")
  config.update(sets=("xstest", str(tmp_path / "probes.csv")), attacks=("role_play",),
                attack_sets=(), workdir=str(tmp_path / "never"))
  cmd = commands.job_command("configs/evaluate.py", "tiny", config)
  out = subprocess.run([*cmd, "--show_config"], cwd=commands.REPO, capture_output=True,
                       text=True, timeout=300, check=True)
  shown = dict(line.split(" = ", 1) for line in out.stdout.splitlines())
  for key in ("sets", "attacks", "attack_sets", "workdir"):
    assert ast.literal_eval(shown[key]) == config[key], key
