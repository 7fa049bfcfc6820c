"""The prepared accelerator run (issue #19): ceilings, training MFU, sampling vs the
bandwidth bound, the PyTorch comparison and the reproduction subset, under one time budget.

  python -m experiments.accelerator.run --scale=h200 --budget_s=540 --out=$OUT/accelerator
  python -m experiments.accelerator.run --scale=tiny --budget_s=120 --out=runs/accelerator/tiny

Phases run in order; before each item the run estimates its cost and records it as skipped
(with the reason) when the time left would not cover it; an item that fails records its error
and the run goes on. `results.json` and `results.md` in --out are rewritten after every item,
and the Markdown is printed last. On an accelerator (`--isolate`, default for --scale=h200)
phases 1-3 run in a child process, so that phase 4's PyTorch subprocess gets the device
memory this process would otherwise hold. See experiments/accelerator/README.md.
"""

from __future__ import annotations

import subprocess
import sys
import time

from absl import app, flags

from experiments.accelerator import budget, phases, report
from experiments.accelerator.scales import SCALES

_SCALE = flags.DEFINE_enum("scale", "tiny", list(SCALES), "Model presets and shapes.")
_BUDGET = flags.DEFINE_float("budget_s", 540.0, "Seconds for the whole run, from --started_at.")
_OUT = flags.DEFINE_string("out", "", "Results folder (default runs/accelerator/<scale>).")
_PHASES = flags.DEFINE_list("phases", list(budget.PHASES), "Phases to run, in this order.")
_ISOLATE = flags.DEFINE_enum("isolate", "auto", ["auto", "yes", "no"],
                             "Run phases 1-3 in a child process (auto: yes for --scale=h200).")
_MERGE = flags.DEFINE_bool("merge", False, "Keep the other phases' records already in --out.")
_STARTED = flags.DEFINE_float("started_at", 0.0, "Epoch seconds the budget counts from "
                              "(0: now; a child gets its parent's).")
_CHILD = flags.DEFINE_bool("child", False, "Set by --isolate for its child process: no table.")


def environment() -> dict:
  """The device this process measures on (initialises the backend: phases 1-3 only)."""
  import jax  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import measure, vs_pytorch  # pylint: disable=import-outside-toplevel
  env = measure.environment()
  try:
    env["memory_bytes_limit"] = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    env["memory_bytes_limit"] = None
  env["versions"] = vs_pytorch.versions()
  env["python"] = sys.version.split()[0]
  return env


def run_child(run: budget.Run, names: list[str]) -> None:
  """Phases 1-3 in a child process of the same budget; what it leaves unfinished is an error."""
  cmd = [sys.executable, "-m", "experiments.accelerator.run", f"--scale={run.scale.name}",
         f"--budget_s={run.budget_s}", f"--out={run.out}", f"--phases={','.join(names)}",
         f"--started_at={run.started_at}", "--isolate=no", "--merge", "--child"]
  run.save()
  try:
    code = subprocess.run(cmd, timeout=max(run.remaining(), 0.0) + 20.0, check=False).returncode
    why = f"child process exited {code}"
  except subprocess.TimeoutExpired:
    why = "child process ran past the budget and was stopped"
  run.reload()
  for name in names:
    record = run.phase(name)
    if record["status"] not in budget.FINAL:
      record.update(status="error", reason=why)
  run.save()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  names = [n for n in budget.PHASES if n in _PHASES.value]
  unknown = set(_PHASES.value) - set(budget.PHASES)
  if unknown:
    raise app.UsageError(f"--phases: unknown {sorted(unknown)}; choose from {budget.PHASES}")
  scale = SCALES[_SCALE.value]
  isolate = _ISOLATE.value == "yes" or (_ISOLATE.value == "auto" and scale.name != "tiny")
  device_here = [n for n in names if n in phases.JAX_PHASES]
  if isolate or not device_here:
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_platforms", "cpu")  # this process never holds the accelerator
  run = budget.Run(scale, _BUDGET.value, _STARTED.value or time.time(),
                   _OUT.value or f"runs/accelerator/{scale.name}", merge=_MERGE.value)
  for name in names:  # the plan: every phase's estimate before anything runs
    if run.phase(name)["status"] not in budget.FINAL or not _MERGE.value:
      try:
        estimate = phases.estimate(run, name)
      except Exception as e:  # pylint: disable=broad-except  # the phase will say why
        estimate = None
        print(f"no estimate for {name}: {type(e).__name__}: {e}", flush=True)
      run.results["phases"][name] = {**run.blank(name), "estimate_s": estimate}
  if device_here and not isolate:
    run.results["environment"] = environment()
  elif not run.results["environment"]:  # the device is the subprocesses' business
    from experiments.benchmarks import vs_pytorch  # pylint: disable=import-outside-toplevel
    run.results["environment"] = {"backend": "not used by this process",
                                  "versions": vs_pytorch.versions(),
                                  "python": sys.version.split()[0]}
  run.save()
  if device_here and isolate:
    run_child(run, device_here)
  for name in names:
    if name in device_here and isolate:
      continue
    try:
      phases.RUNNERS[name](run)
    except Exception as e:  # pylint: disable=broad-except  # a phase's own failure
      record = run.phase(name)
      record.update(status="error", reason=f"{type(e).__name__}: {e}"[:2000])
      record.pop("started_s", None)
      run.save()
  print(f"wrote {run.out / budget.JSON_NAME} and {run.out / budget.MARKDOWN_NAME}", flush=True)
  if not _CHILD.value:  # the outermost process prints the table, last
    print(report.markdown(run.results), flush=True)


if __name__ == "__main__":
  app.run(main)
