"""The TPU ahead-of-time table of docs/MULTIHOST.md: the SFT (LoRA) and PPO update steps of the
270M, 2B and 7B presets compiled for v5e, v5p and v6e slices from a CPU machine, with and
without rematerialisation, and each step's per-chip memory and compiled FLOPs.

Needs libtpu (`.venv-tpu`, made by `make setup-tpu`); tests/test_tpu_aot.py runs a grid of it
($ALIGNMENT_AOT_GRID: `ci` in .ci/run, `main` in `make test-tpu`).

  JAX_PLATFORMS=cpu .venv-tpu/bin/python -m experiments.tpu_aot --out=build/tpu_aot.md
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time
from collections.abc import Sequence

from absl import app, flags

from alignment import lora as lora_lib
from alignment import model, sharding
from alignment.rl import aot as rl_aot
from alignment.rl import ppo
from alignment.training import aot, optimizer


@dataclasses.dataclass(frozen=True)
class Case:
  """One compile: which model and step, on which slice, with what batch."""

  model: str
  step: str  # "sft_lora" | "ppo_lora"
  topology: str
  remat: str
  batch_size: int  # SFT: packed rows; PPO: one optimizer mini-batch
  seq_len: int  # SFT: row length; PPO: prompt + response (half each)
  mesh: tuple[int, int, int] = (1, -1, 1)  # data, fsdp, tensor: FSDP over the whole slice
  unmerged: bool = False  # SFT: LoRA as x W + s (x A) B (no base weight gradient) vs merged


def _pairs(model_name: str, step: str, topology: str, batch_size: int, seq_len: int):
  return [Case(model_name, step, topology, remat, batch_size, seq_len)
          for remat in ("none", "full")]


# The SFT presets' own batches (configs/sft.py: 32 x 512 on 270M, 64 x 512 on 2B/7B); PPO's
# mini-batch of the ppo preset on 270M (8 x (128 + 64) rounded to 8 x 192) and a larger
# 16 x (256 + 256) on 2B/7B. Each model on the smallest slice generation that holds it.
CASES: tuple[Case, ...] = tuple(
    _pairs("gemma3_270m", "sft_lora", "v5e:2x2", 32, 512)
    + _pairs("gemma3_270m", "ppo_lora", "v5e:2x2", 8, 192)
    + _pairs("gemma_2b", "sft_lora", "v5p:2x2x1", 64, 512)
    + _pairs("gemma_2b", "ppo_lora", "v5p:2x2x1", 16, 512)
    + _pairs("gemma_7b", "sft_lora", "v6e:2x4", 64, 512)
    + _pairs("gemma_7b", "ppo_lora", "v6e:2x4", 16, 512))


# Merged against unmerged LoRA (`--grid=lora`): the SFT step of 2B and 7B with remat=full,
# each way, for the per-backend choice of `lora.unmerged` (docs/PERFORMANCE.md).
LORA_CASES: tuple[Case, ...] = tuple(
    Case(name, "sft_lora", topology, "full", 64, 512, unmerged=unmerged)
    for name, topology in (("gemma_2b", "v5p:2x2x1"), ("gemma_7b", "v6e:2x4"))
    for unmerged in (False, True))

# What CI compiles on every run (`--grid=ci`, about 10 minutes on 2 cores instead of 50): each
# model once on its generation, with the presets' remat=full -- the "fits its chips" proof. The
# remat=none rows and the LoRA comparison come from the main and lora grids (`make test-tpu`).
CI_CASES: tuple[Case, ...] = (
    Case("gemma3_270m", "ppo_lora", "v5e:2x2", "full", 8, 192),
    Case("gemma_2b", "sft_lora", "v5p:2x2x1", "full", 64, 512),
    Case("gemma_7b", "sft_lora", "v6e:2x4", "full", 64, 512))
GRIDS = {"main": CASES, "lora": LORA_CASES, "ci": CI_CASES}


def model_config(case: Case) -> model.ModelConfig:
  """bfloat16 compute over float32 master weights, layers scanned, the case's remat."""
  return model.get_config(case.model).replace(dtype="bfloat16", scan_layers=True,
                                              remat=case.remat)


def step_spec(case: Case) -> aot.StepSpec:
  cfg, lcfg = model_config(case), lora_lib.LoraConfig()
  if case.step == "sft_lora":
    return aot.sft_lora_step(cfg, lcfg, case.batch_size, case.seq_len, case.unmerged)
  if case.step == "ppo_lora":
    half = case.seq_len // 2
    return rl_aot.ppo_lora_step(cfg, lcfg, ppo.PPOConfig(), case.batch_size, half,
                                case.seq_len - half)
  raise ValueError(f"unknown step {case.step!r}; expected sft_lora or ppo_lora")


def run_case(case: Case) -> aot.AotReport:
  return aot.step_report(case.topology, sharding.MeshConfig(*case.mesh), step_spec(case),
                         optimizer.OptimizerConfig(), "bfloat16")


def _gib(value: int | None) -> str:
  return "—" if not value else f"{value / 2**30:.2f}"


def markdown(rows: list[tuple[Case, aot.AotReport]]) -> str:
  """The table docs/MULTIHOST.md shows: one line per compile."""
  lines = ["| model | step | slice (chips) | batch | remat | LoRA | arguments / chip GiB | "
           "temporaries / chip GiB | peak / chip GiB | HBM / chip GiB | fits | TFLOP / step | "
           "compile s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for case, r in rows:
    temp = _gib(r.temp_bytes)
    if r.error:  # refused: XLA's message names what the temporaries would need, "(22.86G)"
      needed = re.search(r"\(([\d.]+G)\)", r.error)
      temp = f"needs {needed.group(1)}" if needed else "—"
    flops = "—" if r.flops_per_step is None else f"{r.flops_per_step / 1e12:.1f}"
    lines.append(
        f"| {case.model} | {case.step} | {case.topology} ({r.num_chips}) | "
        f"{case.batch_size} x {case.seq_len} | {case.remat} | "
        f"{'unmerged' if case.unmerged else 'merged'} | {_gib(r.argument_bytes)} | "
        f"{temp} | {_gib(r.peak_bytes)} | {_gib(r.hbm_bytes)} | "
        f"{'yes' if r.fits else 'no'} | {flops} | {r.compile_seconds:.0f} |")
  return "\n".join(lines) + "\n"


def _load(path: pathlib.Path) -> list[tuple[Case, aot.AotReport]]:
  rows = []
  for entry in json.loads(path.read_text()):
    case = entry.pop("case")
    rows.append((Case(**{**case, "mesh": tuple(case["mesh"])}), aot.AotReport(**entry)))
  return rows


def define_flags() -> None:
  """Defined on running, not on import: tests import this module beside others with flags."""
  flags.DEFINE_string("out", "build/tpu_aot.md", "markdown table (and its .json beside it)")
  flags.DEFINE_enum("grid", "main", sorted(GRIDS),
                    "main: remat none/full for every case; ci: what CI compiles; lora: merged vs "
                    "unmerged LoRA SFT")
  flags.DEFINE_string("shard", "0/1", "i/n: compile cases i, i+n, ... (n processes share a grid)")
  flags.DEFINE_list("render", None, "only write the table of these .json outputs, in order")


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if FLAGS.render is not None:
    rows = [row for path in FLAGS.render for row in _load(pathlib.Path(path))]
    order = {case: i for i, case in enumerate(GRIDS[FLAGS.grid])}
    rows.sort(key=lambda row: order.get(row[0], len(order)))
  else:
    index, count = (int(x) for x in FLAGS.shard.split("/"))
    rows, start = [], time.perf_counter()
    for case in GRIDS[FLAGS.grid][index::count]:
      report = run_case(case)
      rows.append((case, report))
      print(json.dumps({"case": dataclasses.asdict(case), **dataclasses.asdict(report)}),
            flush=True)
    print(f"{len(rows)} compiles in {time.perf_counter() - start:.0f} s", flush=True)
    out.with_suffix(".json").write_text(json.dumps(
        [{"case": dataclasses.asdict(c), **dataclasses.asdict(r)} for c, r in rows], indent=1))
  out.write_text(markdown(rows))
  print(markdown(rows))


if __name__ == "__main__":
  define_flags()
  app.run(main)
