"""The training loop: NaN stop, summary JSON, TensorBoard events, FLOPs, mixed precision."""

from __future__ import annotations

import json
import re
import struct
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_training
from alignment.training import checkpointing, distributed, loop, losses, metrics
from alignment.training import step as step_lib


@pytest.fixture(scope="module")
def tiny():
  """The tiny model, its mesh, jitted step and a pristine state (tests train on copies)."""
  cfg, mesh, state, step, tx = tiny_training.setup()
  return types.SimpleNamespace(cfg=cfg, mesh=mesh, state=state, step=step, tx=tx,
                               fresh=lambda: jax.tree.map(jnp.copy, state))


def read_scalars(event_file) -> dict[str, dict[int, float]]:
  """Parses a TensorBoard event file (TFRecord framing) with tensorboardX's protos."""
  from tensorboardX.proto import event_pb2
  data, out, offset = event_file.read_bytes(), {}, 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    record = data[offset + 12:offset + 12 + length]
    offset += 12 + length + 4
    event = event_pb2.Event.FromString(record)
    for value in event.summary.value:
      out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
  batches = tiny_training.SyntheticBatches(tiny.cfg.vocab_size, poison_at=4)  # step 5
  ckpt = checkpointing.Checkpointer(checkpointing.CheckpointConfig(
      str(tmp_path / "ckpt"), save_every=2, max_to_keep=5))
  config = loop.LoopConfig(num_steps=10, log_every=3, output_dir=str(tmp_path / "out"),
                           progress_bar=False)
  with pytest.raises(loop.NonFiniteLossError, match=r"loss became nan at step 5.*step 4"):
    loop.train(config, tiny.fresh(), tiny.step, batches, ckpt, mesh=tiny.mesh)
  assert ckpt.all_steps() == [2, 4]
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["status"] == "non_finite_loss" and summary["last_checkpoint_step"] == 4
  restored = ckpt.restore_latest(checkpointing.abstract_like(tiny.state))
  assert restored.step == 4 and restored.data_state == {"position": 4}
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(restored.state.params))
  ckpt.close()


def test_summary_and_tensorboard_report_the_real_losses(tiny, tmp_path):
  # Independent reference: drive the same jitted step by hand.
  state, batches, expected = tiny.fresh(), tiny_training.SyntheticBatches(tiny.cfg.vocab_size), []
  for _ in range(6):
    state, m = tiny.step(state, jax.device_put(next(batches)))
    expected.append(float(m["loss"]))

  out = tmp_path / "out"
  config = loop.LoopConfig(num_steps=6, log_every=2, output_dir=str(out), progress_bar=False)
  result = loop.train(config, tiny.fresh(), tiny.step,
                      tiny_training.SyntheticBatches(tiny.cfg.vocab_size), mesh=tiny.mesh,
                      learning_rate_fn=lambda s: 1e-3 * s)
  summary = json.loads((out / "summary.json").read_text())
  assert summary == result.summary
  assert summary["status"] == "completed" and summary["final_step"] == 6
  assert summary["final_loss"] == pytest.approx(expected[-1], rel=1e-6)
  assert summary["tokens_per_sec"] > 0 and summary["steps_per_sec"] > 0
  assert summary["mfu"] is None and summary["peak_flops_per_device"] is None  # CPU
  # XLA's FLOP count of the step agrees with the PaLM-style count within 20%.
  analytic = metrics.model_flops_per_step(tiny.cfg, tiny_training.BATCH,
                                          tiny_training.LENGTH - 1)
  assert summary["flops_source"] == "xla_cost_analysis"
  assert 0.8 < summary["flops_per_step"] / analytic < 1.2

  (event_file,) = (out / "tensorboard").glob("events.out.tfevents.*")
  scalars = read_scalars(event_file)
  assert sorted(scalars["loss"]) == [2, 4, 6]
  for step in (2, 4, 6):
    assert scalars["loss"][step] == pytest.approx(expected[step - 1], rel=1e-6)
  assert scalars["learning_rate"][4] == pytest.approx(4e-3)
  assert set(scalars) >= {"grad_norm", "tokens_per_sec", "num_target_tokens"}


def test_run_that_is_already_finished_does_nothing(tiny, tmp_path):
  ckpt = checkpointing.Checkpointer(checkpointing.CheckpointConfig(str(tmp_path), save_every=2))
  config = loop.LoopConfig(num_steps=2, progress_bar=False)
  first = loop.train(config, tiny.fresh(), tiny.step,
                     tiny_training.SyntheticBatches(tiny.cfg.vocab_size), ckpt, mesh=tiny.mesh)
  again = loop.train(config, tiny.fresh(), tiny.step,
                     tiny_training.SyntheticBatches(tiny.cfg.vocab_size), ckpt, mesh=tiny.mesh)
  assert again.summary["start_step"] == 2 and again.summary["final_step"] == 2
  jax.tree.map(np.testing.assert_array_equal, again.state.params, first.state.params)
  ckpt.close()


def test_data_running_out_is_a_clear_error(tiny):
  with pytest.raises(ValueError, match="data ran out after step 1 of 3"):
    loop.train(loop.LoopConfig(num_steps=3, progress_bar=False), tiny.fresh(), tiny.step,
               iter([next(tiny_training.SyntheticBatches(tiny.cfg.vocab_size))]),
               mesh=tiny.mesh)


def test_bfloat16_compute_keeps_float32_master_weights(tiny):
  lm_loss = losses.language_model_loss(tiny.cfg)
  step = jax.jit(step_lib.make_train_step(lm_loss, tiny.tx, compute_dtype="bfloat16"))
  batch = jax.device_put(next(tiny_training.SyntheticBatches(tiny.cfg.vocab_size)))
  state = tiny.fresh()
  f32_loss, _ = lm_loss(state.params, batch, None)
  new_state, m = step(state, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.opt_state)
             if jnp.issubdtype(x.dtype, jnp.floating))
  # bf16 compute differs from f32 a little, not a lot.
  assert float(m["loss"]) != float(f32_loss)
  assert float(m["loss"]) == pytest.approx(float(f32_loss), rel=2e-2)


def test_packed_segments_do_not_leak_across_sequences(tiny):
  """Loss of two packed sequences = token-weighted mean of their separate losses."""
  lm_loss = jax.jit(losses.language_model_loss(tiny.cfg))
  a, b = np.arange(3, 9), np.arange(100, 107)
  packed = {"tokens": np.concatenate([a, b, [0, 0, 0]])[None].astype(np.int32),
            "segment_ids": np.array([[1] * 6 + [2] * 7 + [0] * 3], np.int32),
            "positions": np.array([list(range(6)) + list(range(7)) + [0] * 3], np.int32)}
  loss, aux = lm_loss(tiny.state.params, packed, None)
  la, aux_a = lm_loss(tiny.state.params, {"tokens": a[None].astype(np.int32)}, None)
  lb, aux_b = lm_loss(tiny.state.params, {"tokens": b[None].astype(np.int32)}, None)
  assert float(aux["num_target_tokens"]) == 5 + 6
  assert float(loss) == pytest.approx((5 * float(la) + 6 * float(lb)) / 11, rel=1e-5)


def test_peak_flops_table_and_mfu():
  device = lambda kind, platform="tpu": types.SimpleNamespace(device_kind=kind,
                                                             platform=platform)
  assert metrics.peak_flops_per_device(device("TPU v5 lite")) == 197e12
  assert metrics.peak_flops_per_device(device("TPU v5")) == 459e12
  assert metrics.peak_flops_per_device(device("NVIDIA H100 80GB HBM3", "gpu")) == 989e12
  assert metrics.peak_flops_per_device(device("NVIDIA H100 PCIe", "gpu")) == 756e12
  assert metrics.peak_flops_per_device(device("Some future chip")) is None
  assert metrics.peak_flops_per_device(jax.devices("cpu")[0]) is None
  assert metrics.mfu(1e12, 0.5, 4, 1e12) == pytest.approx(0.5)
  assert metrics.mfu(1e12, 0.5, 4, None) is None


def test_global_batch_single_process_holds_every_row(tiny):
  local = {"tokens": np.arange(16, dtype=np.int32).reshape(8, 2)}
  out = distributed.global_batch(local, tiny.mesh)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), local["tokens"])
  sharding = out["tokens"].sharding
  assert distributed.process_rows(sharding, 8) == slice(0, 8)


def test_hooks_run_every_n_steps_on_that_steps_state(tiny, tmp_path):
  seen = []

  def hook(step, state):
    seen.append((step, int(state.step)))
    return {"eval_loss": 0.5 * step, "note": "not a scalar"}

  out = tmp_path / "out"
  loop.train(loop.LoopConfig(num_steps=5, log_every=5, output_dir=str(out), progress_bar=False),
             tiny.fresh(), tiny.step, tiny_training.SyntheticBatches(tiny.cfg.vocab_size),
             mesh=tiny.mesh, hooks=[loop.Hook(2, hook)])
  assert seen == [(2, 2), (4, 4)]
  (event_file,) = (out / "tensorboard").glob("events.out.tfevents.*")
  assert read_scalars(event_file)["eval_loss"] == {2: 1.0, 4: 2.0}
  with pytest.raises(ValueError, match="every=0"):
    loop.train(loop.LoopConfig(num_steps=1, progress_bar=False), tiny.fresh(), tiny.step,
               tiny_training.SyntheticBatches(tiny.cfg.vocab_size), mesh=tiny.mesh,
               hooks=[loop.Hook(0, hook)])


def test_without_the_bar_each_log_step_is_a_line_with_loss_rate_and_eta(tiny, caplog):
  state, batches, expected = tiny.fresh(), tiny_training.SyntheticBatches(tiny.cfg.vocab_size), []
  for _ in range(6):
    state, m = tiny.step(state, jax.device_put(next(batches)))
    expected.append(float(m["loss"]))
  caplog.set_level("INFO", logger=metrics.log.name)
  loop.train(loop.LoopConfig(num_steps=6, log_every=2, progress_bar=False), tiny.fresh(),
             tiny.step, tiny_training.SyntheticBatches(tiny.cfg.vocab_size), mesh=tiny.mesh)
  lines = [r.getMessage() for r in caplog.records if r.name == metrics.log.name]
  assert len(lines) == 3, lines
  for line, step in zip(lines, (2, 4, 6)):
    head = re.match(r"step (\d+)/6: loss=(\S+) tokens/s=([\d,]+) eta=(\S+) \| ", line)
    assert head, line
    assert int(head.group(1)) == step
    assert float(head.group(2)) == pytest.approx(expected[step - 1], rel=1e-3)
    assert int(head.group(3).replace(",", "")) > 0
    assert "grad_norm=" in line
  assert lines[-1].split("eta=")[1].startswith("0s")  # nothing left at the last step
  caplog.clear()
  with_bar = loop.LoopConfig(num_steps=2, log_every=1, progress_bar=True)
  loop.train(with_bar, tiny.fresh(), tiny.step,
             tiny_training.SyntheticBatches(tiny.cfg.vocab_size), mesh=tiny.mesh)
  assert not [r for r in caplog.records if r.name == metrics.log.name]  # the bar shows it
