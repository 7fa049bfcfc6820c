"""One train step compiled ahead of time for a named TPU slice, from a CPU machine: per-chip
memory and compiled FLOPs as JSON. Needs libtpu (`make setup-tpu`); the grid of such compiles
that docs/MULTIHOST.md shows is `experiments/tpu_aot.py`.

  JAX_PLATFORMS=cpu .venv-tpu/bin/python -m experiments.aot_compile --topology=v5e:2x2 \
      --model=gemma3_270m --batch_size=16 --seq_len=1024 --compute_dtype=bfloat16
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from absl import app, flags

from alignment import lora as lora_lib
from alignment import model, sharding
from alignment.model.config import REMAT_POLICIES
from alignment.training import aot, optimizer

def define_flags() -> None:
  """Defined on running, not on import: tests import this module beside others with flags."""
  flags.DEFINE_string("topology", None, "e.g. v5e:2x2, v4:2x2x1, v5p:2x2x1", required=True)
  flags.DEFINE_enum("model", None, sorted(model.PRESETS), "model preset", required=True)
  flags.DEFINE_enum("step", "lm", ("lm", "sft_lora"),
                    "lm: every weight trains; sft_lora: the SFT job's LoRA step")
  flags.DEFINE_list("mesh", ["1", "-1", "1"], "data,fsdp,tensor (one may be -1)")
  flags.DEFINE_integer("batch_size", None, "global batch size", required=True)
  flags.DEFINE_integer("seq_len", None, "tokens per row", required=True)
  flags.DEFINE_string("compute_dtype", None, "e.g. bfloat16")
  flags.DEFINE_enum("remat", "none", REMAT_POLICIES, "rematerialisation policy")
  flags.DEFINE_bool("scan_layers", False, "layers as one scanned block")
  flags.DEFINE_integer("grad_accum_steps", 1, "micro-batches per optimizer step")


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  mesh_config = sharding.MeshConfig(*(int(x) for x in FLAGS.mesh))
  cfg = model.get_config(FLAGS.model).replace(remat=FLAGS.remat, scan_layers=FLAGS.scan_layers)
  if FLAGS.compute_dtype:
    cfg = cfg.replace(dtype=FLAGS.compute_dtype)
  if FLAGS.step == "lm":
    spec = aot.lm_step(cfg, FLAGS.batch_size, FLAGS.seq_len)
  else:
    spec = aot.sft_lora_step(cfg, lora_lib.LoraConfig(), FLAGS.batch_size, FLAGS.seq_len)
  report = aot.step_report(FLAGS.topology, mesh_config, spec,
                           optimizer.OptimizerConfig(grad_accum_steps=FLAGS.grad_accum_steps),
                           FLAGS.compute_dtype)
  print(json.dumps(dataclasses.asdict(report), indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)
