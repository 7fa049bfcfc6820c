"""Fault injection on the tiny SFT preset: a changed config or data on resume, a checkpoint of
another shape, a learning rate that blows up, SIGTERM mid-run, a second process on one
workdir, writes killed midway (see docs/RELIABILITY.md)."""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alignment import lora as lora_lib
from alignment.answers import records
from alignment.checkpoints import huggingface as hf
from alignment.checkpoints import loading
from alignment.data import download, integrity, sources
from alignment.jobs import sft
from alignment.files import atomic
from alignment.training import checkpointing, loop, run_identity, run_lock, run_start
from configs import ppo as ppo_config
from configs import sft as sft_config
from tiny_sentencepiece import train_tiny_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
# The subprocess run of the SIGTERM test: the tiny preset without mid-run evaluation.
OVERRIDES = {"eval.every": 100_000, "eval.prompts": "", "checkpoint.every": 5}


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tok")
  train_tiny_tokenizer(directory)
  return str(directory / "tiny_sp.model")


def tiny_config(workdir, tokenizer_path, **train):
  config = sft_config.get_config("tiny")
  config.workdir = str(workdir)
  config.model.tokenizer = tokenizer_path
  config.eval.update(every=100_000, prompts="")
  config.train.update({"steps": 3, **train})
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tokenizer_path, data_dir):
  """A 3-step run with a checkpoint at step 3 (each test works on a copy)."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  sft.run(tiny_config(workdir, tokenizer_path))
  return workdir


def copy_of(run, tmp_path):
  shutil.copytree(run, tmp_path / "run")
  return tmp_path / "run"


def snapshot(workdir):
  return {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}


def test_resume_with_another_config_or_data_is_refused_and_touches_nothing(
    finished_run, tokenizer_path, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  before = snapshot(workdir)
  config = tiny_config(workdir, tokenizer_path, steps=6)
  config.lora.rank = 4
  config.seed = 1
  with pytest.raises(run_identity.RunMismatchError) as error:
    sft.run(config)
  message = str(error.value)
  assert "lora.rank: 8 -> 4" in message and "seed: 0 -> 1" in message
  assert "train.steps" not in message  # extending a run is what resuming is for
  assert "data_fingerprint.sha256" in message  # the seed reshuffles the mixture
  config = tiny_config(workdir, tokenizer_path, steps=6)
  config.data.num_safety = 8
  with pytest.raises(run_identity.RunMismatchError, match=r"data\.num_safety: 16 -> 8"):
    sft.run(config)
  assert snapshot(workdir) == before  # config.json, mixture.json, result.json, checkpoints

  # Asked for, the changed run resumes and the change is on record.
  config.resume = "continue_with_changes"
  sft.run(config)
  result = json.loads((workdir / "result.json").read_text())
  assert result["train"]["start_step"] == 3 and result["train"]["final_step"] == 6
  history = json.loads((workdir / run_identity.HISTORY_FILE).read_text())
  assert history[0]["resumed_from_step"] == 3
  assert history[0]["changes"]["data.num_safety"] == {"old": 16, "new": 8}
  config.resume = "sometimes"
  with pytest.raises(ValueError, match="config.resume='sometimes'"):
    sft.run(config)


def test_a_run_saved_with_comma_joined_names_resumes_with_tuples(tmp_path):
  """Runs saved before the list keys became tuples hold "a,b"; the new config.json ["a", "b"]."""
  new = json.loads(ppo_config.get_config("tiny").to_json_best_effort())
  assert new["prompts"]["sources"] == ["seed_tasks"]
  old = json.loads(json.dumps(new))
  old["prompts"]["sources"] = " seed_tasks,"
  old["reward"]["unsafe_sources"] = "hh_harmless"
  (tmp_path / "checkpoints" / "2").mkdir(parents=True)
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert run_identity.check_resume(tmp_path, new) == {}
  assert run_identity.differences(new, old) == {}  # and a saved list against a string
  assert run_identity.differences({"s": ["a,b"]}, {"s": ["a", " b"]}) == {}  # `--config.s=a,b`
  # Other names are still a change; two strings and non-names are compared as they are.
  new["prompts"]["sources"] = ["seed_tasks", "alpaca"]
  with pytest.raises(run_identity.RunMismatchError,
                     match=r"prompts.sources: ' seed_tasks,' -> \['seed_tasks', 'alpaca'\]"):
    run_identity.check_resume(tmp_path, new)
  assert run_identity.differences({"s": "a,b"}, {"s": "a, b"}) == {"s": ("a,b", "a, b")}
  assert run_identity.differences({"s": "b,a"}, {"s": ["a", "b"]}) == {"s": ("b,a", ["a", "b"])}
  assert run_identity.differences({"n": [1, 2]}, {"n": "1,2"}) == {"n": ([1, 2], "1,2")}
  assert run_identity.differences({"s": ""}, {"s": []}) == {}


def test_checkpoint_of_another_shape_is_an_error_not_corruption(
    finished_run, tokenizer_path, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  config = tiny_config(workdir, tokenizer_path, steps=6)
  config.lora.rank = 4
  config.resume = "continue_with_changes"  # past the config check, on to the restore
  with pytest.raises(checkpointing.CheckpointMismatchError) as error:
    sft.run(config)
  assert "saved (" in str(error.value) and ", 8)" in str(error.value)
  assert ", 4)" in str(error.value)
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert names == ["3"]  # nothing moved aside as corrupt
  assert (workdir / "adapters.npz").read_bytes() == (finished_run / "adapters.npz").read_bytes()


@pytest.mark.parametrize("rate", [float("inf"), float("nan"), 0.0, -1e-3, 1e39])
def test_absurd_learning_rate_is_refused_before_any_work(tokenizer_path, tmp_path, rate):
  config = tiny_config(tmp_path / "run", tokenizer_path, learning_rate=rate)
  with pytest.raises(ValueError, match=r"config\.train\.learning_rate="):
    sft.run(config)
  assert not (tmp_path / "run").exists()


def test_a_non_finite_state_is_never_checkpointed(tokenizer_path, tmp_path, monkeypatch,
                                                   data_dir):
  workdir = tmp_path / "run"
  config = tiny_config(workdir, tokenizer_path, steps=2)
  config.checkpoint.every = 1
  sft.run(config)  # steps 1 and 2, sane
  # Past the config check, resumed with a rate that turns the state to NaN in one update
  # while the loss of that step (computed before the update) is still finite.
  monkeypatch.setattr(run_start, "check_learning_rates", lambda config: None)
  config.train.update(learning_rate=1e39, steps=4)
  config.resume = "continue_with_changes"
  with pytest.raises(loop.NonFiniteLossError, match="in step 3 .*last good checkpoint is step 2"):
    sft.run(config)
  assert run_identity.checkpoint_steps(workdir) == [1, 2]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "non_finite_loss" and summary["last_checkpoint_step"] == 2
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  saved = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "2" / "state")
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved))


def test_sigterm_saves_reports_preempted_and_the_rerun_finishes(tokenizer_path, tmp_path,
                                                               data_dir):
  workdir = tmp_path / "run"
  overrides = {**OVERRIDES, "workdir": str(workdir), "model.tokenizer": tokenizer_path,
               "train.steps": 100_000}
  command = [sys.executable, "-m", "alignment.main", "--config=configs/sft.py:tiny"] + [
      f"--config.{k}={v}" for k, v in overrides.items()]
  env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 150
  while not (workdir / "checkpoints" / "5").is_dir():  # training is under way
    assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=60)[0]
  assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
  assert "preempted: stopped by SIGTERM" in output
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "preempted" and summary["stop_signal"] == "SIGTERM"
  stopped = summary["final_step"]
  assert summary["last_checkpoint_step"] == stopped >= 5
  assert stopped in run_identity.checkpoint_steps(workdir)
  assert not (workdir / "result.json").exists()  # not finished
  events = list((workdir / "tensorboard").iterdir())  # flushed and closed by the loop
  assert events and all(e.stat().st_size > 0 for e in events)

  config = tiny_config(workdir, tokenizer_path)
  config.update_from_flattened_dict({k: v for k, v in overrides.items()})
  config.train.steps = stopped + 2
  sft.run(config)
  result = json.loads((workdir / "result.json").read_text())
  assert result["train"]["status"] == "completed"
  assert result["train"]["start_step"] == stopped
  assert result["train"]["final_step"] == stopped + 2


# Holds a workdir's lock in another process until killed.
HOLD_LOCK = ("import sys, time\nfrom alignment.training import run_lock\n"
             "run_lock.RunLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(600)")


def test_a_second_process_on_one_workdir_stops_at_once_naming_the_holder(
    finished_run, tokenizer_path, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(workdir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    before = snapshot(workdir)
    t0 = time.perf_counter()
    with pytest.raises(run_lock.WorkdirLockedError) as error:
      sft.run(tiny_config(workdir, tokenizer_path, steps=6))
    assert time.perf_counter() - t0 < 60  # at once: no training, no waiting on the lock
    message = str(error.value)
    assert f"pid {holder.pid}" in message and "host " in message and str(workdir) in message
    assert snapshot(workdir) == before  # config.json, mixture.json, checkpoints untouched
  finally:
    holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
    holder.wait()
  # A dead holder blocks no one: the same run now resumes from step 3 and finishes.
  sft.run(tiny_config(workdir, tokenizer_path, steps=4))
  result = json.loads((workdir / "result.json").read_text())
  assert result["train"]["start_step"] == 3 and result["train"]["final_step"] == 4
  # Released when the job returned: another holder (here a fresh descriptor) gets it.
  with run_lock.RunLock(workdir) as lock:
    assert lock.held
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_the_run_lock_is_reentrant_in_one_process_and_released_by_the_job(tmp_path):
  @run_lock.released_on_return
  def job(fail: bool):
    run_lock.hold(tmp_path)
    run_lock.hold(tmp_path)  # a second start in the same process keeps its own lock
    with pytest.raises(run_lock.WorkdirLockedError, match=f"pid {os.getpid()}"):
      run_lock.RunLock(tmp_path).acquire()  # any other descriptor is refused
    if fail:
      raise RuntimeError("job failed")

  with pytest.raises(RuntimeError, match="job failed"):
    job(True)
  job(False)
  with run_lock.RunLock(tmp_path) as lock:  # released both times
    assert lock.held


# Starts an atomic rewrite of argv[1], writes half of it, then dies by SIGKILL mid-write.
KILLED_MID_WRITE = (
    "import os, signal, sys\nfrom alignment.files import atomic\n"
    "with atomic.writing(sys.argv[1]) as f:\n"
    "  f.write('{\"train\": {\"status\": \"compl'); f.flush(); os.fsync(f.fileno())\n"
    "  os.kill(os.getpid(), signal.SIGKILL)\n")


def test_a_write_killed_midway_leaves_the_previous_file_whole(tmp_path):
  path = tmp_path / "result.json"
  atomic.write_json(path, {"train": {"status": "completed"}})
  before = path.read_bytes()
  env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], cwd=REPO,
                          env=env, capture_output=True, text=True)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert path.read_bytes() == before  # a reader sees the old result, never half a new one
  # The half-written temporary file is beside it, hidden, never under the result's name.
  assert [p.name.startswith(".result.json.") for p in tmp_path.iterdir()].count(True) == 1

  # An exception mid-write (a generator of answers failing) also leaves the old file, and
  # removes its temporary file.
  answers = tmp_path / "answers.jsonl"
  good = [records.AnswerRecord("xstest", "1", "p", "a", "safe")]
  records.write_answers(answers, good)
  before = answers.read_bytes()

  def failing():
    yield good[0]
    raise RuntimeError("scorer died")

  with pytest.raises(RuntimeError, match="scorer died"):
    records.write_answers(answers, failing())
  assert answers.read_bytes() == before
  assert not list(tmp_path.glob(".answers.jsonl.*"))
  assert oct(answers.stat().st_mode & 0o777) == "0o644"  # readable by whoever it is shared with


@pytest.mark.parametrize("key, value, message", [
    ("eval.every", 0, r"config\.eval\.every=0: must be an integer >= 1"),
    ("train.steps", 0, r"config\.train\.steps=0: must be an integer >= 1"),
    ("checkpoint.every", -1, r"config\.checkpoint\.every=-1: must be an integer >= 1"),
    ("model.dtype", "float17", r"config model\.dtype='float17': must be one of float32"),
])
def test_impossible_counts_and_dtypes_are_refused_naming_the_key(tokenizer_path, tmp_path, key,
                                                                 value, message):
  config = tiny_config(tmp_path / "run", tokenizer_path)
  config.update_from_flattened_dict({key: value})
  with pytest.raises(ValueError, match=message):
    sft.run(config)
  assert not (tmp_path / "run").exists()  # refused before the run directory is made


class _WritesWhenUnpickled:
  """Unpickling this creates a file: proof that a pickle in an .npz was (not) executed."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_damaged_adapter_files_name_the_file_and_never_unpickle(finished_run, tmp_path):
  good = finished_run / "adapters.npz"
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
  section = {"checkpoint": "random", "preset": "tiny_gemma3", "adapters": str(truncated)}
  with pytest.raises(ValueError, match=f"config model.adapters: {truncated}: not a readable "
                                       r"\.npz, truncated or damaged \(BadZipFile"):
    loading.load_model(section)

  marker = tmp_path / "unpickled"
  with np.load(good) as data:
    entries = {key: data[key] for key in data.files}
  pickled = tmp_path / "pickled.npz"
  np.savez(pickled, **entries, **{"layer_0/zz/a": np.array([_WritesWhenUnpickled(marker)])})
  with pytest.raises(ValueError, match=f"{pickled}: entry 'layer_0/zz/a' is a pickled object "
                                       "array"):
    lora_lib.load_adapters(pickled)
  assert not marker.exists()


def test_damaged_or_non_finite_weights_name_the_checkpoint(tmp_path):
  cfg, params, _ = loading.load_model({"checkpoint": "random", "preset": "tiny_gemma3"})
  out = hf.save_safetensors(cfg, params, tmp_path / "ckpt")
  loading.load_model({"checkpoint": str(out)})  # intact: loads
  weights = out / "model.safetensors"
  intact = weights.read_bytes()
  weights.write_bytes(intact[:len(intact) // 2])
  with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file, truncated "
                                       "or damaged"):
    loading.load_model({"checkpoint": str(out)})

  leaf = jax.tree_util.tree_flatten_with_path(params)[0][-1]
  poisoned = jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[(0,) * x.ndim].set(np.nan) if path == leaf[0] else x, params)
  hf.save_safetensors(cfg, poisoned, tmp_path / "nan")
  with pytest.raises(ValueError, match=f"model checkpoint {tmp_path / 'nan'} \\(config "
                                       r"model\.checkpoint\): parameter \S+ holds NaN or inf"):
    loading.load_model({"checkpoint": str(tmp_path / "nan")})


def test_a_modified_data_file_is_reported_and_digests_are_cached(data_dir, tmp_path,
                                                                 monkeypatch, caplog):
  source = sources.get_source("malicious_instructions")
  root = tmp_path / "data"
  path = root / source.path
  path.parent.mkdir(parents=True)
  shutil.copyfile(data_dir / source.path, path)
  monkeypatch.setenv(integrity.CACHE_ENV, str(tmp_path / "digests.json"))
  monkeypatch.delenv(integrity.ALLOW_ENV, raising=False)
  monkeypatch.setattr(integrity, "_MEMO", {})
  hashed = []
  sha256_file = download.sha256_file
  monkeypatch.setattr(download, "sha256_file", lambda p: hashed.append(p) or sha256_file(p))

  caplog.set_level(logging.INFO, logger=integrity.__name__)
  rows = sources.load("malicious_instructions", root)
  assert len(hashed) == 1 and not caplog.records  # the published bytes: hashed once, quiet
  cache = json.loads((tmp_path / "digests.json").read_text())
  assert cache[os.path.realpath(path)][2] == source.sha256
  monkeypatch.setattr(integrity, "_MEMO", {})  # a new process: only the JSON cache is left
  sources.load("malicious_instructions", root)
  assert len(hashed) == 1  # stat, not hashed again

  # Edited in place (one prompt dropped): a warning naming the file and both digests.
  published = json.loads(path.read_text())

  def drop_prompts(n):
    path.write_text(json.dumps({**published, "instructions": published["instructions"][:-n],
                                "tags": published["tags"][:-n]}))

  drop_prompts(1)
  assert len(sources.load("malicious_instructions", root)) == len(rows) - 1
  assert len(hashed) == 2
  actual = download.sha256_file(path)
  (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
  message = warning.getMessage()
  assert str(path) in message and actual in message and source.sha256 in message
  assert integrity.ALLOW_ENV in message

  # Modified on purpose: said at INFO only.
  caplog.clear()
  drop_prompts(2)
  monkeypatch.setenv(integrity.ALLOW_ENV, "1")
  sources.load("malicious_instructions", root)
  assert caplog.records and all(r.levelno == logging.INFO for r in caplog.records)


def test_strict_data_check_refuses_a_modified_file_naming_it_and_both_digests(
    data_dir, tmp_path, monkeypatch, caplog):
  source = sources.get_source("malicious_instructions")
  root = tmp_path / "data"
  path = root / source.path
  path.parent.mkdir(parents=True)
  shutil.copyfile(data_dir / source.path, path)
  monkeypatch.setenv(integrity.CACHE_ENV, str(tmp_path / "digests.json"))
  monkeypatch.delenv(integrity.ALLOW_ENV, raising=False)
  monkeypatch.setattr(integrity, "_MEMO", {})
  monkeypatch.setenv(integrity.MODE_ENV, "strict")
  rows = sources.load("malicious_instructions", root)  # the published file passes
  published = json.loads(path.read_text())
  path.write_text(json.dumps({**published, "instructions": published["instructions"][:-1],
                              "tags": published["tags"][:-1]}))
  actual = download.sha256_file(path)
  with pytest.raises(integrity.ModifiedDataError) as error:
    sources.load("malicious_instructions", root)
  message = str(error.value)
  assert str(path) in message and actual in message and source.sha256 in message
  assert "ALIGNMENT_DATA_CHECK=strict" in message and integrity.ALLOW_ENV in message

  # The switch for deliberately edited copies still works under strict: INFO, loads.
  caplog.set_level(logging.INFO, logger=integrity.__name__)
  monkeypatch.setenv(integrity.ALLOW_ENV, "1")
  assert len(sources.load("malicious_instructions", root)) == len(rows) - 1
  assert caplog.records and all(r.levelno == logging.INFO for r in caplog.records)

  # off: nothing hashed, nothing said.
  monkeypatch.delenv(integrity.ALLOW_ENV)
  monkeypatch.setenv(integrity.MODE_ENV, "off")
  monkeypatch.setattr(integrity, "_MEMO", {})
  monkeypatch.setattr(download, "sha256_file", lambda p: pytest.fail(f"hashed {p}"))
  caplog.clear()
  assert len(sources.load("malicious_instructions", root)) == len(rows) - 1
  assert not caplog.records
  monkeypatch.setenv(integrity.MODE_ENV, "paranoid")
  with pytest.raises(ValueError, match=r"\$ALIGNMENT_DATA_CHECK='paranoid': must be one of "
                                       "warn, strict, off"):
    sources.load("malicious_instructions", root)


# A new run's process on argv[1]: an atomic write of its own is under way when it takes the
# workdir's lock (which sweeps up temporaries of killed writes); then it finishes that write.
NEXT_RUN = (
    "import sys, logging\nlogging.basicConfig(level=logging.INFO)\n"
    "from alignment.files import atomic\nfrom alignment.training import run_lock\n"
    "with atomic.writing(sys.argv[1] + '/answers.jsonl') as f:\n"
    "  f.write('{}\\n')\n"
    "  run_lock.hold(sys.argv[1])\n"
    "  f.write('{}\\n')\n")


def test_temporaries_of_killed_writes_are_swept_when_a_run_takes_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  for target in (workdir / "result.json", workdir / "eval" / "eval.json"):
    target.parent.mkdir(exist_ok=True)
    atomic.write_json(target, {"train": {"status": "completed"}})
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], cwd=REPO,
                            env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
  stale = sorted(workdir.rglob(".*.tmp"))
  assert [p.name.split(".")[1] for p in stale] == ["result", "eval"]
  # Kept: names the atomic writer never makes, and another run's directory (it has a lock).
  kept = [workdir / ".result.json.tmp", workdir / "notes.abcdefgh.tmp",
          workdir / "other_run" / ".result.json.abcdefgh.tmp"]
  (workdir / "other_run").mkdir()
  (workdir / "other_run" / run_lock.LOCK_FILE).write_text("")
  for path in kept:
    path.write_text("x")
  time.sleep(1.1)  # the next run starts later (a margin of 1 s protects its own writes)

  result = subprocess.run([sys.executable, "-c", NEXT_RUN, str(workdir)], cwd=REPO, env=env,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert not any(p.exists() for p in stale)
  assert all(p.exists() for p in kept)
  assert "removed 2 temporary file(s) of writes killed before this run" in result.stderr
  assert all(str(p) in result.stderr for p in stale)
  # Its own write under way was not touched: it completed.
  assert (workdir / "answers.jsonl").read_text() == "{}\n{}\n"
  assert json.loads((workdir / "result.json").read_text()) == {"train": {"status": "completed"}}
  assert sorted(workdir.rglob("*.tmp")) == sorted(kept)


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
  """`atomic.writing_directory` (HF folders, PEFT adapters): a failure inside the block leaves
  the old folder and no temporary; success replaces it, old files gone."""
  out = tmp_path / "merged"
  with atomic.writing_directory(out) as tmp:
    (tmp / "a.txt").write_text("first")
  assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
  with pytest.raises(RuntimeError, match="disk full"):
    with atomic.writing_directory(out) as tmp:
      (tmp / "b.txt").write_text("half")
      raise RuntimeError("disk full")
  assert (out / "a.txt").read_text() == "first" and not (out / "b.txt").exists()
  with atomic.writing_directory(out) as tmp:
    (tmp / "b.txt").write_text("second")
  assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no .tmp- / .old- left
