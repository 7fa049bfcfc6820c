"""How a training step's time and memory grow with sequence length, batch size and devices.

  python -m experiments.benchmarks.cost_growth [--model=tiny_gemma3] [--seq_lens=64,256,1024]
      [--batch_sizes=1,4,16] [--mode=full] [--devices=8] [--output=growth.json]

Single device: for each shape, the compiled full (or LoRA) SFT step's per-device memory from
XLA's memory analysis (arguments, temporaries, peak) and its median step time; sequence
lengths at --base_batch, batch sizes at --base_seq.

Several devices: a child process with `--xla_force_host_platform_device_count=N` builds the
same step on a 1-device mesh and on data / fsdp / mixed meshes, and reports per-device
memory and each mesh's first loss (equal to the 1-device loss up to float rounding: the check
that sharding changes where numbers live, not what they are). Simulated CPU devices share one
machine's cores, so their step times say nothing about speed over real devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import jax
from absl import app, flags

from alignment import lora as lora_lib
from alignment import sharding
from alignment.checkpoints.loading import load_model
from experiments.benchmarks import accounting
from experiments.benchmarks.measure import bench_train, model_section

GROWTH_COLUMNS = ("batch", "seq", "step_s", "tokens_per_s", "argument_bytes", "temp_bytes",
                  "peak_bytes", "model_flops")
MESH_COLUMNS = ("mesh", "devices", "argument_bytes", "temp_bytes", "peak_bytes", "first_loss",
                "loss_rel_diff")
# (data, fsdp, tensor) meshes measured on simulated devices, for N = 8.
MESHES = ((1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2))


def growth_rows(cfg, params, lcfg, shapes: list[tuple[int, int]], steps: int
                ) -> list[dict[str, Any]]:
  rows = []
  for b, t in shapes:
    rows.append(bench_train(cfg, params, lcfg, b, t, steps))
    print(json.dumps({k: rows[-1].get(k) for k in GROWTH_COLUMNS}), flush=True)  # progress
  return rows


def mesh_rows(cfg, params, lcfg, batch_size: int, seq_len: int,
              meshes=MESHES) -> list[dict[str, Any]]:
  """Per-device memory and first loss of the step on each (data, fsdp, tensor) mesh."""
  rows = []
  for data, fsdp, tensor in meshes:
    devices = jax.devices()[:data * fsdp * tensor]
    mesh = sharding.make_mesh(sharding.MeshConfig(data, fsdp, tensor), devices)
    row = bench_train(cfg, params, lcfg, batch_size, seq_len, steps=1, mesh=mesh)
    row["mesh"] = f"data={data} fsdp={fsdp} tensor={tensor}"
    rows.append(row)
  reference = rows[0]["first_loss"]
  for row in rows:
    row["loss_rel_diff"] = abs(row["first_loss"] - reference) / abs(reference)
  return rows


_MODEL = flags.DEFINE_string("model", "tiny_gemma3", "Model preset (random weights).")
_MODE = flags.DEFINE_enum("mode", "full", ["full", "lora"], "Full fine-tuning or LoRA (rank 8).")
_SEQ_LENS = flags.DEFINE_list("seq_lens", ["64", "256", "1024"], "Sequence lengths.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "Batch sizes.")
_BASE_BATCH = flags.DEFINE_integer("base_batch", 2, "Batch size of the sequence sweep.")
_BASE_SEQ = flags.DEFINE_integer("base_seq", 128, "Sequence length of the batch sweep.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per shape.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated devices for the mesh part (0: skip).")
_CHILD = flags.DEFINE_bool("mesh_child", False, "Internal: run the mesh part and print JSON.")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results here as JSON.")


def _model():
  cfg, params, _ = load_model(model_section(_MODEL.value, "random", "float32"))
  lcfg = lora_lib.LoraConfig(rank=8, alpha=16.0) if _MODE.value == "lora" else None
  return cfg, params, lcfg


def _run_mesh_child() -> list[dict[str, Any]]:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={_DEVICES.value}",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.benchmarks.cost_growth", "--mesh_child",
         f"--model={_MODEL.value}", f"--mode={_MODE.value}", f"--base_seq={_BASE_SEQ.value}"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"mesh child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
  del argv
  cfg, params, lcfg = _model()
  if _CHILD.value:
    rows = mesh_rows(cfg, params, lcfg, batch_size=8, seq_len=_BASE_SEQ.value)
    print(json.dumps(rows, default=str))
    return
  seq_shapes = [(_BASE_BATCH.value, int(t)) for t in _SEQ_LENS.value]
  batch_shapes = [(int(b), _BASE_SEQ.value) for b in _BATCHES.value]
  print(f"{_MODEL.value} ({cfg.num_params():,} params), {_MODE.value} fine-tuning, float32, "
        f"backend {jax.default_backend()}, load average {os.getloadavg()[0]:.1f}")
  seq_rows = growth_rows(cfg, params, lcfg, seq_shapes, _STEPS.value)
  print(f"sequence length sweep (batch {_BASE_BATCH.value}):")
  print(accounting.format_table(seq_rows, GROWTH_COLUMNS))
  batch_rows = growth_rows(cfg, params, lcfg, batch_shapes, _STEPS.value)
  print(f"batch size sweep (seq {_BASE_SEQ.value}):")
  print(accounting.format_table(batch_rows, GROWTH_COLUMNS))
  meshes = []
  if _DEVICES.value:
    meshes = _run_mesh_child()
    print(f"meshes over {_DEVICES.value} simulated CPU devices (batch 8, seq {_BASE_SEQ.value}; "
          "bytes are per device):")
    print(accounting.format_table(meshes, MESH_COLUMNS))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"model": _MODEL.value, "mode": _MODE.value, "seq_sweep": seq_rows,
                 "batch_sweep": batch_rows, "meshes": meshes}, f, indent=2, default=str)
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
