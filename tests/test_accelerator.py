"""CPU rehearsal of the prepared accelerator run (experiments/accelerator) at --scale=tiny.

The entry and the device script run as subprocesses, as they will on the H200: every phase
ends done, skipped or error, both files are written, a tiny budget skips rather than fails,
and the measured figures are positive. Phase 4 is skipped where peft is not installed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import pytest

from experiments.accelerator import budget, carry, phases, report
from experiments.accelerator.scales import TINY

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra) -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", **extra)


def _load(out: pathlib.Path) -> dict:
  return json.loads((out / budget.JSON_NAME).read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("accelerator_tiny")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.accelerator.run", "--scale=tiny", "--budget_s=600",
       f"--out={out}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc.stdout


def test_tiny_run_records_every_phase(tiny_run):
  out, stdout = tiny_run
  results = _load(out)
  assert (out / budget.MARKDOWN_NAME).read_text().strip() in stdout
  assert stdout.rstrip().endswith((out / budget.MARKDOWN_NAME).read_text().rstrip())
  statuses = {name: p["status"] for name, p in results["phases"].items()}
  assert set(statuses) == set(budget.PHASES)
  assert set(statuses.values()) <= set(budget.FINAL), statuses
  for name in ("ceilings", "train", "sampling"):
    assert statuses[name] == "done", results["phases"][name]
    assert all(i["status"] == "done" for i in results["phases"][name]["items"])
  for name in ("vs_pytorch", "reproduction"):
    assert statuses[name] in ("done", "skipped"), results["phases"][name]
  assert "--num_safety=0,300,2000" in results["phases"]["reproduction"]["commands"][0]
  assert results["environment"]["backend"] == "cpu"


def test_tiny_run_figures_are_positive(tiny_run):
  results = _load(tiny_run[0])["phases"]
  for item in results["ceilings"]["items"]:
    assert item["value"] > 0 and item["seconds"] > 0
  modes = set()
  for item in results["train"]["items"]:
    modes.add(item["mode"])
    for key in ("step_s", "tokens_per_s", "model_flops", "flops_per_s", "mfu_vs_measured"):
      assert item[key] > 0, (key, item)
    assert item["mfu"] is None  # a CPU has no datasheet peak
  assert modes == {"train_full", "train_lora"}
  rows = report.sample_rows(results["sampling"])
  assert {(r["mode"], r["batch"]) for r in rows} == {(m, b) for m in ("prefill", "decode")
                                                      for b in TINY.sample_batches}
  for row in rows:
    assert row["tokens_per_s"] is None or row["tokens_per_s"] > 0
    if row["mode"] == "prefill":
      assert row["seconds"] > 0 and row["flops_per_s"] > 0
    else:
      assert row["bytes_per_step"] > 0


def test_tiny_budget_skips_later_phases_through_the_device_script(tmp_path):
  """device.sh as the device runs it (carry install, then the entry), isolated phases 1-3
  in a child, with a 2-second budget: the later phases are skipped, none fails."""
  proc = subprocess.run(
      ["bash", "experiments/accelerator/device.sh", "2", "--scale=tiny", "--isolate=yes"],
      cwd=REPO, env=_env(OUT=str(tmp_path), ACCELERATOR_SITE=str(tmp_path / "site"),
                         PYTHON=sys.executable),
      capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "accelerator"
  assert (out / budget.MARKDOWN_NAME).exists() and (out / "carry_install.txt").exists()
  results = _load(out)["phases"]
  assert results["ceilings"]["status"] in ("done", "skipped")
  for name in ("train", "sampling", "reproduction"):
    assert results[name]["status"] == "skipped", results[name]
    assert results[name]["reason"].startswith("budget"), results[name]
    assert results[name]["estimate_s"] > 0
  assert results["vs_pytorch"]["status"] == "skipped"


def test_a_failing_item_is_recorded_and_the_run_goes_on(tmp_path):
  run = budget.Run(TINY, 100.0, time.time(), tmp_path, log=lambda _: None)
  record = run.start_phase("train", 1.0)

  def fails():
    raise ValueError("no such device")

  run.item(record, {"n": 1}, 0.1, fails)
  run.item(record, {"n": 2}, 0.1, lambda: {"value": 3.0})
  run.item(record, {"n": 3}, 1e6, lambda: pytest.fail("ran past the budget"))
  run.finish_phase(record)
  saved = _load(tmp_path)["phases"]["train"]
  assert [i["status"] for i in saved["items"]] == ["error", "done", "skipped"]
  assert "ValueError: no such device" in saved["items"][0]["error"]
  assert saved["items"][1]["value"] == 3.0
  assert saved["items"][2]["reason"].startswith("budget")
  assert saved["status"] == "error"
  assert "## 2. Training" in (tmp_path / budget.MARKDOWN_NAME).read_text()


def test_targets_read_vs_pytorch_output(tmp_path):
  """The phase-4 reader takes what vs_pytorch writes; targets say met / missed / unmeasured."""
  path = tmp_path / "vs.json"
  path.write_text(json.dumps({
      "shapes": {"dtype": "bfloat16"}, "greedy_agreement": 0.9,
      "pytorch": {"torch_device": "cuda", "attn_implementation": "sdpa"},
      "rows": [{"figure": "LoRA SFT tokens/s", "jax": 3.0, "pytorch": 1.0, "jax_speedup": 3.0},
               {"figure": "DPO step s", "jax": 1.0, "pytorch": 1.2,
                "jax_speedup": 1.2}]}))
  torch_item = {"batch": 1, "status": "done", **phases.read_vs_pytorch(path)}
  run = budget.Run(TINY, 10.0, time.time(), tmp_path / "run", log=lambda _: None)
  p = run.results["phases"]
  p["train"]["items"] = [{"status": "done", "model": "m", "mode": "train_full", "batch": 2,
                          "seq": 8, "mfu": 0.5}]
  p["sampling"]["items"] = [{"status": "done", "model": "m", "batch": 1, "rows": [
      {"mode": "prefill", "batch": 1}, {"mode": "decode", "batch": 1,
                                        "bandwidth_fraction": 0.4}]}]
  p["vs_pytorch"]["items"] = [torch_item]
  verdicts = [t["status"] for t in report.targets(run.results)]
  assert verdicts == ["met", "missed", "met", "missed"]
  assert torch_item["dtype"] == "bfloat16"
  assert "| LoRA SFT tokens/s |" in report.markdown(run.results)


def _wheel(folder: pathlib.Path, name: str, files: dict[str, str]) -> pathlib.Path:
  path = folder / name
  with zipfile.ZipFile(path, "w") as z:
    for inner, text in files.items():
      z.writestr(inner, text)
  return path


def test_carry_unpacks_only_missing_wheels_and_checks_the_limit(tmp_path, capsys):
  wheels, site = tmp_path / "wheels", tmp_path / "site"
  wheels.mkdir()
  _wheel(wheels, "absl_py-0.0.1-py3-none-any.whl", {"absl/__init__.py": "raise Exception"})
  _wheel(wheels, "not_installed_here-0.1-py3-none-any.whl",
         {"not_installed_here/__init__.py": "X = 1\n"})
  _wheel(wheels, "other_python-0.1-cp399-cp399-manylinux_2_28_x86_64.whl",
         {"other_python/__init__.py": ""})
  assert carry.install(wheels, site) == 0
  assert (site / "not_installed_here" / "__init__.py").read_text() == "X = 1\n"
  assert not (site / "absl").exists() and not (site / "other_python").exists()
  printed = capsys.readouterr().out
  assert "present  absl_py" in printed and "SKIPPED  other_python" in printed
  assert carry.check(wheels) == 0
  assert carry.check(wheels, limit=1) == 1


@pytest.mark.parametrize("name, fits", [
    ("a-1-py3-none-any.whl", True), ("a-1-py2.py3-none-any.whl", True),
    ("a-1-cp312-cp312-manylinux_2_28_x86_64.whl", True),
    ("a-1-cp311-cp311-manylinux_2_28_x86_64.whl", False),
    ("a-1-cp310-abi3-manylinux2014_x86_64.whl", True),
    ("a-1-cp313-abi3-manylinux2014_x86_64.whl", False)])
def test_wheel_tags_for_python_312(name, fits):
  assert carry.python_matches(pathlib.Path(name), (3, 12)) is fits
