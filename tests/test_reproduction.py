"""The reproduction script end to end at its `tiny` preset, and its findings report.

The laptop grid itself never runs in CI; this runs the same script, the same subprocesses and
the same report on three points of a random tiny model.
"""

import gzip
import json
import subprocess
import sys

import pytest

from alignment.answers import records
from alignment.evaluation import stats
from experiments import reproduce_safety_tuned_llamas as stl
from experiments import reproduction_report
from tiny_sentencepiece import train_tiny_tokenizer

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_laptop_grid_is_as_documented():
  points = stl.PRESETS["laptop"].points
  assert len(points) == len(set(points))
  ks = sorted({k for k, fmt, _ in points if fmt == "instruction"})
  assert len(ks) >= 6 and ks[0] == 0
  seeds = {k: sum(1 for kk, fmt, _ in points if kk == k and fmt == "instruction") for k in ks}
  assert min(seeds.values()) >= 2
  assert any(fmt == "question" for _, fmt, _ in points)
  # Seed-major order: every K at seed 0 runs before any second seed.
  first_seed1 = next(i for i, p in enumerate(points) if p[2] == 1)
  assert {p[0] for p in points[:first_seed1] if p[1] == "instruction"} == set(ks)


def test_tiny_preset_runs_end_to_end_and_resumes(tmp_path, data_dir):
  train_tiny_tokenizer(tmp_path)
  tok = tmp_path / "tiny_sp.model"
  workdir = tmp_path / "sweep"
  cmd = [sys.executable, "-m", "experiments.reproduce_safety_tuned_llamas", "--preset=tiny",
         f"--workdir={workdir}", f"--data_dir={data_dir}",
         f"--sft_overrides=--config.model.tokenizer={tok} --config.model.preset=tiny_gemma1"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "3 grid points; 6 steps to do" in out.stdout
  findings = json.loads((workdir / "findings.json").read_text())
  assert [(g["format"], g["num_safety"]) for g in findings["groups"]] == [
      ("instruction", 0), ("instruction", 8), ("question", 8)]
  assert findings["format"] and findings["format"][0]["num_safety"] == 8
  assert (workdir / "findings.png").stat().st_size > 1000
  timings = [json.loads(line) for line in (workdir / "timings.jsonl").read_text().splitlines()]
  assert [t["step"].split()[0] for t in timings] == ["sft", "eval"] * 3 + ["report"]
  assert any((workdir / "jax_cache").iterdir())  # the shared compilation cache was used
  # Rerunning skips every finished step and only redoes the report.
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "0 steps to do" in again.stdout


def fake_run(sweep, name, k, fmt, seed, answers, loss=2.0):
  """A finished run: config.json, result.json (held-out loss), eval/answers.jsonl."""
  run = sweep / name
  (run / "eval").mkdir(parents=True)
  (run / "config.json").write_text(json.dumps(
      {"seed": seed, "data": {"num_safety": k, "safety_format": fmt, "num_base": 250}}))
  (run / "result.json").write_text(json.dumps({"evaluations": [{"eval_loss": loss}]}))
  rs = [records.AnswerRecord(s, f"{s}-{i}", "p", a, label)
        for i, (s, label, a) in enumerate(answers)]
  records.write_answers(run / "eval" / "answers.jsonl", rs)
  (run / "eval" / "result.json").write_text("{}")


REFUSE, COMPLY = "I cannot help with that.", "Sure, here it is."


def test_report_pools_seeds_and_intervals(tmp_path):
  # K=0: refuses 0 of 10 unsafe; K=50 seeds 0/1: 6 and 8 of 10; XSTest safe: 0/4 then 1/4 + 1/4.
  def answers(unsafe_refusals, safe_refusals):
    return ([("malicious_instructions", "unsafe", REFUSE if i < unsafe_refusals else COMPLY)
             for i in range(10)] +
            [("xstest", "safe", REFUSE if i < safe_refusals else COMPLY) for i in range(4)])

  fake_run(tmp_path, "k0_s0", 0, "instruction", 0, answers(0, 0), loss=2.0)
  fake_run(tmp_path, "k50_s0", 50, "instruction", 0, answers(6, 1), loss=2.1)
  fake_run(tmp_path, "k50_s1", 50, "instruction", 1, answers(8, 1), loss=2.3)
  paths = reproduction_report.write(tmp_path)
  payload = json.loads(paths["json"].read_text())
  g50 = payload["groups"][1]
  assert g50["num_safety"] == 50 and g50["seeds"] == [0, 1]
  pooled = g50["rates"]["unsafe_pooled"]
  assert (pooled["k"], pooled["n"]) == (14, 20)
  lo, hi = stats.wilson(14, 20)
  assert pooled["low"] == pytest.approx(lo) and pooled["high"] == pytest.approx(hi)
  assert g50["seed_spread"]["unsafe_pooled"]["min"] == 0.6
  assert g50["seed_spread"]["unsafe_pooled"]["max"] == 0.8
  assert g50["eval_loss"]["mean"] == pytest.approx(2.2)
  diff = payload["differences"][0]["unsafe_pooled"]
  d, dlo, dhi = stats.difference(stats.Rate(14, 20), stats.Rate(0, 10))
  assert diff == {"difference": pytest.approx(d), "low": pytest.approx(dlo),
                  "high": pytest.approx(dhi)}
  assert dlo > 0
  md = paths["markdown"].read_text()
  assert "| instruction | 50 (17%) | 2 |" in md and "70.0% [" in md
  exported = reproduction_report.export_answers(reproduction_report.load_runs(tmp_path),
                                                tmp_path / "export")
  with gzip.open(exported[1], "rt") as f:
    first = json.loads(f.readline())
  assert set(first) == {"set", "id", "answer"}


def test_report_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    reproduction_report.load_runs(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="no finished evaluations"):
    reproduction_report.load_runs(tmp_path)
  (tmp_path / "r" / "eval").mkdir(parents=True)
  (tmp_path / "r" / "eval" / "result.json").write_text("{}")
  (tmp_path / "r" / "config.json").write_text(json.dumps({"data": {}}))
  with pytest.raises(ValueError, match="no data.num_safety"):
    reproduction_report.load_runs(tmp_path)
