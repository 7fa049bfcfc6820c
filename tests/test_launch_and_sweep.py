"""Launch scripts and the sweep runner, exercised through their dry-run outputs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from experiments import sweep
from launch import restart, tpu_vm

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


# A small resumable job: 30 steps of a deterministic recurrence, a checkpoint after every
# step. SIGTERM is handled as alignment.main does it: at the end of the running step it saves,
# writes summary.json {"status": "preempted"} and exits 143. argv: workdir, mode ('train';
# 'fail': exit 1 at once; 'exit143': exit 143 with no summary; 'die': let SIGTERM kill it).
RESUMABLE = """
import json, os, pathlib, signal, sys, time
from alignment.files import atomic
workdir, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
with open(workdir / "starts", "a") as f:
  f.write(f"{os.getpid()}\\n")
if mode == "fail":
  sys.exit(1)
if mode == "exit143":
  sys.exit(143)
stop = []
if mode != "die":
  signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
ckpt = workdir / "ckpt.json"
state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "x": 1}
while state["step"] < 30:
  state = {"step": state["step"] + 1, "x": (state["x"] * 6364136223846793005 + 1) % 2**61}
  atomic.write_json(ckpt, state)
  time.sleep(0.05)
  if stop:
    atomic.write_json(workdir / "summary.json", {"status": "preempted", "step": state["step"]})
    sys.exit(143)
atomic.write_json(workdir / "result.json", state)
"""


def resumable(workdir, mode="train"):
  workdir.mkdir(parents=True, exist_ok=True)
  return [sys.executable, "-c", RESUMABLE, str(workdir), mode]


def child_env():
  return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def starts(workdir):
  return (workdir / "starts").read_text().split()


@pytest.mark.parametrize("mode, stop", [("train", signal.SIGTERM), ("die", signal.SIGTERM),
                                        ("train", signal.SIGKILL)])
def test_a_preempted_run_is_restarted_and_ends_as_an_uninterrupted_one(tmp_path, mode, stop):
  assert restart.run(resumable(tmp_path / "plain"), env=child_env()) == 0
  expected = json.loads((tmp_path / "plain" / "result.json").read_text())
  assert expected["step"] == 30

  workdir = tmp_path / "stopped"
  outcome = []
  # 'train' handles SIGTERM (saves, summary "preempted", exit 143; checked in the workdir);
  # 'die' is killed by it (return code -15). Both are preemptions: rerun on the same command.
  launcher = threading.Thread(target=lambda: outcome.append(restart.run(
      resumable(workdir, mode), max_restarts=2, workdir=workdir if mode == "train" else None,
      env=child_env())))
  launcher.start()
  deadline = time.time() + 60
  while not (workdir / "ckpt.json").exists() or json.loads(
      (workdir / "ckpt.json").read_text())["step"] < 5:
    assert launcher.is_alive() and time.time() < deadline
    time.sleep(0.02)
  os.kill(int(starts(workdir)[0]), stop)
  launcher.join(timeout=60)
  if stop == signal.SIGKILL:  # a crash (OOM killer, kill -9), not a preemption: not rerun
    assert outcome == [-signal.SIGKILL] and len(starts(workdir)) == 1
    assert not (workdir / "result.json").exists()
    return
  assert outcome == [0]
  assert len(starts(workdir)) == 2  # one restart, on the same command
  if mode == "train":
    stopped = json.loads((workdir / "summary.json").read_text())
    assert stopped["status"] == "preempted" and 5 <= stopped["step"] < 30
  assert json.loads((workdir / "result.json").read_text()) == expected


def test_only_preemptions_are_restarted_and_only_max_restarts_times(tmp_path):
  env = child_env()
  failing = tmp_path / "fail"
  assert restart.run(resumable(failing, "fail"), max_restarts=3, env=env) == 1
  assert len(starts(failing)) == 1  # a crash or bad config is never rerun
  with pytest.raises(subprocess.CalledProcessError):
    restart.check_run(resumable(failing, "fail"), env=env)
  # Exit 143 without a "preempted" summary in the workdir: not the job's preemption.
  other = tmp_path / "exit143"
  assert restart.run(resumable(other, "exit143"), max_restarts=3, workdir=other, env=env) == 143
  assert len(starts(other)) == 1
  # Preempted every time: the first run and max_restarts reruns, then its code is returned.
  always = tmp_path / "always"
  assert restart.run(resumable(always, "exit143"), max_restarts=2, env=env) == 143
  assert len(starts(always)) == 3
  assert restart.preempted(-signal.SIGTERM) and restart.preempted(143)
  assert not restart.preempted(130) and not restart.preempted(1) and not restart.preempted(0)
  with pytest.raises(ValueError, match="max_restarts=-1"):
    restart.run(["true"], max_restarts=-1)
  run = [c for c in tpu_vm.build_commands(["copy", "run"], name="vm", zone="z")
         if tpu_vm.is_run_step(c)]
  assert len(run) == 1 and "alignment.main" in run[0][-1]  # only `run` is restarted
