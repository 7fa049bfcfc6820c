"""Launch scripts and the sweep runner, exercised through their dry-run outputs."""

import json
import pathlib
import subprocess
import sys

import pytest

from experiments import sweep
from launch import tpu_vm

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_tpu_launch_commands_target_all_workers():
  cmds = tpu_vm.build_commands(["create", "copy", "install", "run", "delete"], name="vm",
                               zone="z1", project="p", accelerator_type="v5litepod-16",
                               config="configs/sft.py:x", overrides="--config.seed=3")
  text = [" ".join(c) for c in cmds]
  assert text[0].startswith("gcloud compute tpus tpu-vm create vm --zone=z1 --project=p")
  assert "--accelerator-type=v5litepod-16" in text[0]
  ssh = [t for t in text if " ssh " in t]
  assert ssh and all("--worker=all" in t for t in ssh)
  run = [t for t in text if "alignment.main" in t]
  assert len(run) == 1 and "--config=configs/sft.py:x" in run[0]
  assert "--config.seed=3" in run[0] and "--config.distributed.initialize=True" in run[0]
  assert text[-1].endswith("--quiet") and " delete vm " in text[-1]
  with pytest.raises(ValueError, match="unknown launch step"):
    tpu_vm.build_commands(["boot"], name="vm", zone="z")


def test_tpu_launch_cli_dry_run_prints_and_runs_nothing():
  out = subprocess.run(
      [sys.executable, "-m", "launch.tpu_vm", "--name=vm", "--zone=z", "--dry_run",
       "--steps=create,run"], cwd=REPO, capture_output=True, text=True, check=True).stdout
  lines = out.strip().splitlines()
  assert len(lines) == 2 and lines[0].startswith("gcloud compute tpus tpu-vm create vm")


def test_grid_expansion_and_skipping(tmp_path):
  points = sweep.expand_grid(sweep.PAPER_GRID)
  assert len(points) == 7 * 2
  assert len({sweep.run_name(p) for p in points}) == len(points)
  done = points[3]
  run = tmp_path / sweep.run_name(done)
  run.mkdir()
  result = json.dumps({"train": {"status": "completed", "final_step": 10}})
  (run / "result.json").write_text(result[:-5])  # cut short by a crash
  assert not sweep.is_finished(tmp_path, done)
  (run / "result.json").write_text(result)
  assert not sweep.is_finished(tmp_path, done)  # no config.json: not known to be this point
  config = {"seed": done["seed"], "data": {"num_safety": done["data.num_safety"],
                                           "safety_format": done["data.safety_format"]}}
  (run / "config.json").write_text(json.dumps({**config, "seed": 7}))
  assert not sweep.is_finished(tmp_path, done)  # another run under this name
  (run / "config.json").write_text(json.dumps(config))
  assert sweep.is_finished(tmp_path, done)
  (run / "result.json").write_text(result.replace("completed", "preempted"))
  assert not sweep.is_finished(tmp_path, done)
  assert not sweep.is_finished(tmp_path, points[4])
  for bad in ("../../x", "a/b", "..", "a\\b"):
    with pytest.raises(ValueError, match="run directory name may not hold"):
      sweep.run_name({**done, "data.safety_format": bad})
  cmd = sweep.run_command("configs/sft.py:p", done, tmp_path)
  assert f"--config.workdir={tmp_path / sweep.run_name(done)}" in cmd
  assert f"--config.data.num_safety={done['data.num_safety']}" in cmd
  with pytest.raises(ValueError, match="has no values"):
    sweep.expand_grid({"seed": []})


def test_sweep_cli_print_mode_skips_finished(tmp_path):
  finished = tmp_path / "num_safety=0_safety_format=instruction_seed=0"
  finished.mkdir()
  (finished / "result.json").write_text("{}")
  (finished / "config.json").write_text(json.dumps(
      {"seed": 0, "data": {"num_safety": 0, "safety_format": "instruction"}}))
  out = subprocess.run(
      [sys.executable, "-m", "experiments.sweep", f"--workdir={tmp_path}", "--mode=print",
       "--num_safety=0,100", "--formats=instruction"], cwd=REPO, capture_output=True,
      text=True, check=True).stdout.strip().splitlines()
  assert out[0] == "2 runs in the grid, 1 finished, 1 to do"
  assert len(out) == 2 and "--config.data.num_safety=100" in out[1]
  escape = subprocess.run(
      [sys.executable, "-m", "experiments.sweep", f"--workdir={tmp_path / 'sweep'}",
       "--mode=local", "--num_safety=0", "--formats=../../x"], cwd=REPO, capture_output=True,
      text=True)
  assert escape.returncode != 0 and escape.stdout == ""
  assert "data.safety_format='../../x'" in escape.stderr and "'/' or '..'" in escape.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == [finished.name]  # nothing made
