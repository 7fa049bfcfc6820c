"""Job `export`: a training run directory -> Hugging Face model folder(s) and PEFT adapters.

The work is `alignment.checkpoints.export.export_run`; this job checks the config, runs it
and writes out_dir/export.json (what was written from which run).
"""

from __future__ import annotations

import pathlib

import ml_collections
from absl import logging

from alignment.checkpoints import export as export_lib
from alignment.checkpoints.loading import COMPUTE_DTYPES
from alignment.files import atomic


def run(config: ml_collections.ConfigDict) -> dict[str, str]:
  if not config.run_dir:
    raise ValueError("config.run_dir: set it to a training run's workdir (e.g. runs/sft)")
  if config.dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.dtype={config.dtype!r}: must be one of {', '.join(COMPUTE_DTYPES)}")
  run_dir = pathlib.Path(config.run_dir)
  out_dir = pathlib.Path(config.out_dir) if config.out_dir else run_dir / "export"
  written = export_lib.export_run(run_dir, out_dir, config.dtype, config.family or None,
                                  config.write_base)
  atomic.write_json(out_dir / "export.json", {
      "run_dir": str(run_dir.absolute()), "dtype": config.dtype, "written": written})
  for name, path in written.items():
    logging.info("export: %s -> %s", name, path)
  return written
