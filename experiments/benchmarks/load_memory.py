"""Host memory of loading a checkpoint whole, then placing it, vs loading it into shards.

  python -m experiments.benchmarks.load_memory [--checkpoint=embedded] [--devices=8]
      [--mesh=1,-1,1] [--output=load_memory.json]

Each mode runs in its own child process (peak RSS is per process) with
`--xla_force_host_platform_device_count=N`:
  whole    `load_model` (every leaf a whole float32 array), then `jax.device_put` onto
           `param_shardings` (what jobs did before `load_model_sharded`);
  sharded  `load_model_sharded` (each device slice read and converted alone).
Reported: peak RSS over the load (ru_maxrss, minus the RSS after JAX started), the peak of
Python-tracked host allocations (tracemalloc: numpy buffers, not XLA's), and the bytes the
placed shards take. On simulated CPU devices the shards themselves live in host memory, so
peak RSS includes them in both modes; the whole-copy overhead is what differs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import jax
from absl import app, flags

from alignment import sharding
from alignment.checkpoints.loading import load_model, load_model_sharded

_CHECKPOINT = flags.DEFINE_string("checkpoint", "embedded", "config model.checkpoint")
_DEVICES = flags.DEFINE_integer("devices", 8, "simulated CPU devices")
_MESH = flags.DEFINE_string("mesh", "1,-1,1", "data,fsdp,tensor")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the rows")
_MODE = flags.DEFINE_enum("mode", "", ["", "whole", "sharded"], "internal: one child's mode")

MIB = 2 ** 20


def _rss_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def measure(mode: str) -> dict:
  mesh = sharding.make_mesh(sharding.MeshConfig(*map(int, _MESH.value.split(","))))
  jax.block_until_ready(jax.numpy.zeros(()))  # JAX and its devices started
  section = {"checkpoint": _CHECKPOINT.value}
  start_rss = _rss_mib()
  tracemalloc.start()
  t0 = time.perf_counter()
  if mode == "whole":
    cfg, params, _ = load_model(section)
    params = jax.device_put(params, sharding.param_shardings(cfg, mesh))
  else:
    cfg, params, _ = load_model_sharded(section, mesh)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  _, traced_peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
  shards = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)
  whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  return {"mode": mode, "checkpoint": _CHECKPOINT.value, "devices": jax.device_count(),
          "mesh": _MESH.value, "seconds": round(seconds, 1),
          "rss_before_mib": round(start_rss), "peak_rss_over_start_mib": round(peak_rss - start_rss),
          "tracemalloc_peak_mib": round(traced_peak / MIB),
          "params_float32_mib": round(whole / MIB), "placed_shards_mib": round(shards / MIB)}


def main(argv):
  del argv
  if _MODE.value:
    print("ROW " + json.dumps(measure(_MODE.value)), flush=True)
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={_DEVICES.value}")
  rows = []
  for mode in ("whole", "sharded"):
    done = subprocess.run([sys.executable, "-m", "experiments.benchmarks.load_memory",
                           f"--mode={mode}", f"--checkpoint={_CHECKPOINT.value}",
                           f"--mesh={_MESH.value}"], env=env, capture_output=True, text=True,
                          check=False)
    lines = [l for l in done.stdout.splitlines() if l.startswith("ROW ")]
    if done.returncode or not lines:
      raise RuntimeError(f"{mode} child failed:\n{done.stderr[-3000:]}")
    rows.append(json.loads(lines[-1][4:]))
    print(json.dumps(rows[-1]), flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
