"""Checkpoints: SIGKILL mid-run then resume, partial/corrupt steps, restore onto another mesh."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import tiny_training
from alignment.training import checkpointing, loop

TESTS = pathlib.Path(__file__).resolve().parent
STEPS = 10


def run_worker(args, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, str(TESTS / "tiny_training.py"), *args], env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """Final loss and state of a straight 10-step run in this process (the reference)."""
  cfg, mesh, state, step, _ = tiny_training.setup()
  directory = tmp_path_factory.mktemp("straight")
  with checkpointing.Checkpointer(checkpointing.CheckpointConfig(
      str(directory), save_every=4, max_to_keep=2)) as ckpt:
    result = loop.train(loop.LoopConfig(num_steps=STEPS, progress_bar=False), state, step,
                        tiny_training.SyntheticBatches(cfg.vocab_size), ckpt, mesh=mesh)
  return result, directory


def test_sigkill_mid_run_then_restart_matches_uninterrupted_run(tmp_path, uninterrupted):
  directory, result = tmp_path / "ckpt", tmp_path / "result.json"
  args = ["--steps", str(STEPS), "--checkpoint_dir", str(directory), "--save_every", "4",
          "--result", str(result)]
  # SIGKILL when batch 9 is requested: step 8's async save may or may not have finished
  # (orbax finishes step 4's before starting step 8's), so the latest step is 4 or 8.
  killed = run_worker(args + ["--kill_at", "9"])
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert not result.exists()
  latest = checkpointing.Checkpointer(checkpointing.CheckpointConfig(
      str(directory))).latest_step()
  assert latest in (4, 8)
  resumed = run_worker(args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  summary = json.loads(result.read_text())
  assert summary["start_step"] == latest and summary["final_step"] == STEPS
  expected = uninterrupted[0].summary["final_loss"]
  np.testing.assert_allclose(summary["final_loss"], expected, rtol=1e-6)
  # keep-N: only the two newest steps remain.
  assert sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) == [8, 10]


def test_partial_and_corrupt_steps_are_never_picked(tmp_path, uninterrupted):
  reference, source = uninterrupted
  directory = tmp_path / "ckpt"
  directory.mkdir()
  good = directory / "10"
  os.system(f"cp -r {source / '10'} {good}")
  # An interrupted save: orbax's temporary directory, as a SIGKILL leaves it.
  partial = directory / "12.orbax-checkpoint-tmp-1234567"
  os.system(f"cp -r {good} {partial}")
  # A finalized-looking step whose array files were truncated.
  corrupt = directory / "14"
  os.system(f"cp -r {good} {corrupt}")
  for f in (corrupt / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
      f.write_bytes(f.read_bytes()[:7])

  ckpt = checkpointing.Checkpointer(checkpointing.CheckpointConfig(str(directory)))
  assert 12 not in ckpt.all_steps()
  target = checkpointing.abstract_like(reference.state)
  restored = ckpt.restore_latest(target)
  assert restored.step == 10 and restored.data_state == {"position": 10}
  assert (directory / "14.corrupt").exists() and 14 not in ckpt.all_steps()
  jax.tree.map(np.testing.assert_array_equal, restored.state.params, reference.state.params)
  ckpt.close()


def test_restore_onto_a_different_mesh(tmp_path, uninterrupted):
  code = f"""
import sys, json
sys.path.insert(0, {str(TESTS)!r})
import jax, numpy as np
import tiny_training as tt
from alignment.training import checkpointing, loop, distributed
config = checkpointing.CheckpointConfig({str(tmp_path / 'ckpt')!r}, save_every=5)
cfg, mesh, state, step, _ = tt.setup((2, 4, 1))
with checkpointing.Checkpointer(config) as ckpt:
  loop.train(loop.LoopConfig(num_steps=5, progress_bar=False), state, step,
             tt.SyntheticBatches(cfg.vocab_size), ckpt, mesh=mesh)
cfg, mesh, state, step, _ = tt.setup((1, 2, 4), seed=1)  # other mesh, other init
with checkpointing.Checkpointer(config) as ckpt:
  restored = ckpt.restore(5, checkpointing.abstract_like(state))
  emb = restored.state.params["embedder"]["input_embedding"]
  out = {{"spec": list(emb.sharding.spec), "shard": list(emb.addressable_shards[0].data.shape),
         "mesh": dict(emb.sharding.mesh.shape)}}
  result = loop.train(loop.LoopConfig(num_steps={STEPS}, progress_bar=False), state, step,
                      tt.SyntheticBatches(cfg.vocab_size), ckpt, mesh=mesh)
out["summary"] = result.summary
print("RESULT" + json.dumps(out))
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        cwd=TESTS.parent, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[6:])
  assert out["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}
  assert out["spec"] == ["tensor", "fsdp"] and out["shard"] == [128, 32]
  assert out["summary"]["start_step"] == 5
  np.testing.assert_allclose(out["summary"]["final_loss"],
                             uninterrupted[0].summary["final_loss"], rtol=2e-5)


def test_checkpoint_config_rejects_bad_interval(tmp_path):
  with pytest.raises(ValueError, match="save_every=0"):
    checkpointing.Checkpointer(checkpointing.CheckpointConfig(str(tmp_path), save_every=0))
