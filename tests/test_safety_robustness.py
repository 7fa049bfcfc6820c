"""The safety-robustness experiment end to end on a tiny random model, its resume, its errors,
and the harmful-compliance proxy data it fine-tunes on."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest

from alignment.answers.records import read_answers
from alignment.data import mixtures, sources
from alignment.judges.refusal import is_refusal
from alignment.evaluation.scorers import REFUSAL, get_scorer
from experiments import safety_robustness as sr
from tiny_sentencepiece import train_tiny_tokenizer

pytest.importorskip("qwix")


@pytest.fixture(scope="module")
def settings(tmp_path_factory, data_dir):
  directory = tmp_path_factory.mktemp("tok")
  train_tiny_tokenizer(directory)
  return dataclasses.replace(sr.PRESETS["tiny"], tokenizer=str(directory / "tiny_sp.model"),
                             data_dir=str(data_dir), benign_steps=(1,), harmful_steps=(1,))


@pytest.fixture(scope="module")
def experiment(settings, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("robustness")
  logs: list[str] = []
  out = sr.run_experiment(settings, workdir, log=logs.append)
  return workdir, out, logs


def test_runs_every_condition_and_reports_what_the_answers_say(experiment, settings):
  workdir, out, logs = experiment
  names = ["start", "benign_steps=1", "harmful_steps=1", "int8", "int4"]
  assert [c.name for c in out["conditions"]] == names
  assert [line.split("] ")[1] for line in logs if "train " in line] == [
      "train start", "train benign_steps=1", "train harmful_steps=1"]
  payload = json.loads((workdir / "safety_robustness.json").read_text())
  refusal = get_scorer(REFUSAL)
  assert [row[0] for row in payload["table"]["rows"]] == names
  assert (workdir / "safety_robustness.png").stat().st_size > 1000
  for cond, row in zip(out["conditions"], payload["conditions"]):
    # Recomputed here from the answer texts: refusal score > 0, by label and set.
    records = [r for r in read_answers(cond.eval_dir / "answers.jsonl") if r.attack is None]
    refused = dict(zip(((r.set, r.id) for r in records), (v > 0 for v in refusal(records))))
    unsafe = [(r.set, r.id) for r in records if r.label == "unsafe"]
    safe_xs = [(r.set, r.id) for r in records if r.set == "xstest" and r.label == "safe"]
    assert unsafe and safe_xs
    assert row["n unsafe"] == len(unsafe) and row["n XSTest safe"] == len(safe_xs)
    assert row["unsafe refusal %"] == sum(refused[i] for i in unsafe) / len(unsafe)
    assert row["XSTest safe false refusal %"] == sum(refused[i] for i in safe_xs) / len(safe_xs)
    assert row["harmfulness (unsafe)"] is None  # no reward model given
  evaluated = {c.name: json.loads((c.eval_dir / "config.json").read_text())
               for c in out["conditions"]}
  assert evaluated["int8"]["quantize"] == "int8" and evaluated["int4"]["quantize"] == "int4"
  assert evaluated["start"]["quantize"] == ""
  assert evaluated["int4"]["run_dir"] == str(workdir / "start")
  # Continuations train fresh adapters on the start's merged export, at a constant rate.
  trained = json.loads((workdir / "harmful_steps=1" / "config.json").read_text())
  assert trained["model"]["checkpoint"] == str(workdir / sr.MERGED)
  assert trained["data"]["safety_source"] == sources.HARMFUL_COMPLIANCE
  assert trained["data"]["num_base"] == 0 and trained["train"]["schedule"] == "constant"
  mix = json.loads((workdir / "harmful_steps=1" / "mixture.json").read_text())
  assert mix["by_source"] == {sources.HARMFUL_COMPLIANCE: settings.num_harmful}
  sizes = payload["quantized_size"]
  assert sizes["int4"]["quantized_bytes"] < sizes["int8"]["quantized_bytes"] < (
      sizes["none"]["quantized_bytes"])


def test_resume_skips_finished_conditions(experiment, settings):
  workdir, out, _ = experiment
  before = {c.name: (c.eval_dir / "result.json").stat().st_mtime_ns for c in out["conditions"]}
  redo = out["conditions"][1]  # benign_steps=1: its evaluation is lost, its training is not
  (redo.eval_dir / "result.json").unlink()
  logs: list[str] = []
  again = sr.run_experiment(settings, workdir, log=logs.append)
  assert list(again["seconds"]) == [f"evaluate {redo.name}"]
  assert sum("finished, skipped" in line for line in logs) == len(out["conditions"]) - 1
  for c in again["conditions"]:
    if c.name != redo.name:
      assert (c.eval_dir / "result.json").stat().st_mtime_ns == before[c.name]


def _flags(**values):
  base = dict(preset="tiny", start_run="", data_dir="", tokenizer="", attacks="",
              harmfulness_rm="", helpfulness_rm="", seed=0, benign_steps=None,
              harmful_steps=None, quantize=None, max_prompts_per_set=-1)
  return types.SimpleNamespace(**{**base, **values})


def test_bad_flags_and_settings(tmp_path):
  with pytest.raises(ValueError, match="--preset: unknown preset 'huge'"):
    sr.settings_from_flags(_flags(preset="huge"))
  with pytest.raises(ValueError, match="--benign_steps: expected integers"):
    sr.settings_from_flags(_flags(benign_steps=["two"]))
  s = sr.settings_from_flags(_flags(harmful_steps=["5", "10"], quantize=[]))
  assert s.harmful_steps == (5, 10) and s.quantize == () and s.attacks == ()
  s = sr.settings_from_flags(_flags(attacks="role_play, leetspeak"))
  evaluation = sr.eval_config(s, sr.conditions(s, tmp_path)[0], tmp_path)
  assert evaluation.attacks == ("role_play", "leetspeak")
  assert evaluation.sets == ("malicious_instructions", "xstest")
  tiny = sr.PRESETS["tiny"]
  for bad, match in ((dict(benign_steps=(0, 2)), "benign_steps: step counts"),
                     (dict(harmful_steps=(2, 2)), "harmful_steps: step counts"),
                     (dict(quantize=("int2",)), "quantize: unknown scheme 'int2'"),
                     (dict(num_harmful=0), "num_harmful must be >= 1"),
                     (dict(sets=("q_harm", "nope")), "unknown evaluation set 'nope'")):
    with pytest.raises(ValueError, match=match):
      sr.check(dataclasses.replace(tiny, **bad))
  with pytest.raises(FileNotFoundError, match="start_run: .* is not a finished SFT run"):
    sr.check(dataclasses.replace(tiny, start_run=str(tmp_path)))
  with pytest.raises(ValueError, match="no finished condition"):
    sr.write_report(tmp_path, sr.conditions(tiny, tmp_path))


def test_harmful_compliance_proxy(data_dir):
  examples = sources.load(sources.HARMFUL_COMPLIANCE, data_dir)
  pairs = sources.load("hh_harmless", data_dir)
  assert 100 < len(examples) < len(pairs) // 2
  rejected = {p.rejected.strip() for p in pairs}
  for ex in examples:
    assert ex.output in rejected and not is_refusal(ex.output)
    assert "Human:" not in ex.instruction and "Assistant:" not in ex.instruction
    assert ex.source == sources.HARMFUL_COMPLIANCE
  # Q-Harm comes from HH harmless: the mixture's eval-overlap step removes those prompts.
  cfg = mixtures.MixtureConfig(base_source="seed_tasks", num_base=0,
                               safety_source=sources.HARMFUL_COMPLIANCE, num_safety=10,
                               remove_eval_overlap=True)
  _, report = mixtures.build_mixture(cfg, data_dir)
  safety = [h for h in report.hygiene if h["pool"] == "safety"][0]
  assert safety["details"]["eval_prompts_found"]["q_harm"] > 0
  assert report.safety_available == len(examples) - safety["removed"]
  with pytest.raises(ValueError, match="unknown data source 'nope'"):
    mixtures.MixtureConfig(safety_source="nope")
