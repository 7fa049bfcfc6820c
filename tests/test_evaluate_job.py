"""The evaluate job end to end on a tiny random model: answers, records, scores, report."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import lora as lora_lib
from alignment.answers import records
from alignment.checkpoints.loading import load_model
from alignment.data import sources
from alignment.evaluation import generation, model_source, scorers
from alignment.judges import refusal
from alignment.evaluation.model_source import resolve_model
from alignment.jobs import evaluate
from alignment.prompts.templates import ALPACA
from alignment.sampling import Sampler
from configs import evaluate as evaluate_config
from tiny_sentencepiece import train_tiny_tokenizer

SETS = ("malicious_instructions", "physical_safety_safe", "controversial", "xstest")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tok")
  train_tiny_tokenizer(directory)
  return str(directory / "tiny_sp.model")


def tiny_config(tmp_path, tokenizer_path, **overrides):
  config = evaluate_config.get_config("tiny")
  config.workdir = str(tmp_path / "eval")
  config.model.tokenizer = tokenizer_path
  # Gemma 1 (no post-norms): a random tiny Gemma 3 only echoes the prompt's last token, whatever
  # its weights, while adapters can steer a Gemma 1's residual stream and so its answers.
  config.model.preset = "tiny_gemma1"
  config.sets = SETS
  config.max_prompts_per_set = 3
  config.batch_size = 2  # several batches, so the length sort reorders prompts
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tokenizer_path):
  """A fake SFT run directory: config.json (model section, K) and non-zero LoRA adapters."""
  run_dir = tmp_path_factory.mktemp("sft_run")
  config = tiny_config(run_dir, tokenizer_path)
  cfg, params, tokenizer = load_model(config.model)
  lcfg = lora_lib.LoraConfig(rank=2, alpha=8.0, targets=("q", "v", "gate", "down"))
  adapters = lora_lib.init_adapters(cfg, lcfg, jax.random.key(1))  # B = 0: a no-op
  keys = iter(jax.random.split(jax.random.key(2), 1000))
  adapters = jax.tree.map(lambda x: x + 0.5 * jax.random.normal(next(keys), x.shape), adapters)
  lora_lib.save_adapters(run_dir / "adapters.npz", adapters, lcfg)
  (run_dir / "config.json").write_text(json.dumps({"model": dict(config.model),
                                                   "data": {"num_safety": 300}}))
  merged = lora_lib.merge(params, adapters, lcfg)
  return run_dir, (cfg, params, merged, tokenizer)


def test_evaluate_writes_one_scored_record_per_prompt(tmp_path, tokenizer_path, sft_run,
                                                      data_dir):
  run_dir, (cfg, params, merged, tokenizer) = sft_run
  config = tiny_config(tmp_path, tokenizer_path, run_dir=str(run_dir))
  config.model.checkpoint = "does/not/exist"  # ignored: the run's own model section wins
  out = evaluate.run(config)
  workdir = tmp_path / "eval"
  written = records.read_answers(workdir / evaluate.ANSWERS_FILE)
  want = [p for name in SETS for p in sources.load(name, data_dir)[:3]]
  assert [(r.set, r.id, r.prompt, r.label) for r in written] == [
      (p.source, p.id, p.prompt, p.label) for p in want]
  assert {r.label for r in written if r.set == "malicious_instructions"} == {"unsafe"}
  assert {r.label for r in written if r.set == "physical_safety_safe"} == {"safe"}
  assert {r.label for r in written if r.set == "controversial"} == {None}
  # Independent check: each answer is what the sampler on base + adapters gives for that
  # prompt alone (the job batched and reordered them).
  sampler = Sampler(cfg, merged, tokenizer, template=ALPACA)
  answers = [r.answer for r in written]
  assert answers == [sampler([r.prompt], 4).text[0] for r in written]
  assert len(set(answers)) > 1
  # Scores: the refusal classifier's, for every answer.
  for r in written:
    assert r.scores[scorers.REFUSAL] == scorers.REFUSAL_SCORE[
        refusal.classify_refusal(r.answer).label]
  report = json.loads((workdir / "report.json").read_text())
  assert report["summary"]["n"] == len(want)
  assert set(report["summary"]["sets"]) == set(SETS)
  assert (workdir / "report.md").read_text().startswith(f"# Evaluation of {run_dir}")
  result = json.loads((workdir / evaluate.RESULT_FILE).read_text())
  assert result["sets"] == {name: 3 for name in SETS}
  assert result["generation"]["batches"] == 6 and result["scorers"] == [scorers.REFUSAL]
  assert result["adapters"] == str(run_dir / "adapters.npz") and result["template"] == "alpaca"
  assert set(out["summary"].sets["xstest"].rates) <= {"safe", "unsafe"}

  # The same prompts without the adapters: the base model answers differently.
  base = evaluate.run(tiny_config(tmp_path / "base", tokenizer_path,
                                  sets=("malicious_instructions",)))
  base_answers = [r.answer for r in base["records"]]
  assert base_answers == Sampler(cfg, params, tokenizer, template=ALPACA)(
      [r.prompt for r in base["records"]], 4).text
  assert base_answers != answers[:3]


def test_run_dir_errors(tmp_path, tokenizer_path, sft_run):
  run_dir, _ = sft_run
  config = tiny_config(tmp_path, tokenizer_path, run_dir=str(run_dir))
  source = resolve_model(config.model, config.adapters, config.run_dir)
  assert source.adapters == str(run_dir / "adapters.npz")
  assert source.run_config["data"]["num_safety"] == 300
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_text((run_dir / "config.json").read_text())
  config.run_dir = str(unfinished)
  with pytest.raises(FileNotFoundError, match="neither adapters.npz"):
    resolve_model(config.model, config.adapters, config.run_dir)
  config.run_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    resolve_model(config.model, config.adapters, config.run_dir)


def test_bad_config_gives_clear_errors(tmp_path, tokenizer_path):
  with pytest.raises(ValueError, match="unknown evaluation set 'harmbench'"):
    evaluate.run(tiny_config(tmp_path, tokenizer_path, sets=("xstest", "harmbench")))
  with pytest.raises(FileNotFoundError, match="config.adapters: no LoRA adapter file"):
    evaluate.run(tiny_config(tmp_path, tokenizer_path, adapters=str(tmp_path / "no.npz")))
  config = tiny_config(tmp_path, tokenizer_path)
  config.scoring.harmfulness_rm = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="scoring.harmfulness_rm: .* not a saved reward"):
    evaluate.run(config)
  with pytest.raises(ValueError, match="config.template"):
    evaluate.run(tiny_config(tmp_path, tokenizer_path, template="vicuna"))
  with pytest.raises(ValueError, match="unknown evaluate preset"):
    evaluate_config.get_config("huge")
  assert not (tmp_path / "eval").exists()  # nothing written before the checks pass


def test_length_sorted_batches_cover_every_index_once():
  lengths = [5, 9, 1, 9, 3, 7, 2]
  batches = generation.length_sorted_batches(lengths, 3)
  assert [len(b) for b in batches] == [3, 3, 1]
  assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
  flat = [lengths[i] for b in batches for i in b]
  assert flat == sorted(lengths, reverse=True)
  assert batches[0][:2] == [1, 3]  # ties keep input order
  with pytest.raises(ValueError, match="batch_size"):
    generation.length_sorted_batches(lengths, 0)


def fake_evaluated_run(sweep_dir, point, refusals):
  """An SFT run dir (config.json) with a finished evaluation: answers refusing as given."""
  from experiments import reproduce_safety_tuned_llamas as stl
  from experiments import sweep
  run_dir = sweep_dir / sweep.run_name(point)
  eval_dir = stl.eval_dir(sweep_dir, point)
  eval_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text(json.dumps({"data": {
      "num_safety": point["data.num_safety"], "safety_format": point["data.safety_format"]}}))
  (eval_dir / "config.json").write_text(json.dumps({"run_dir": str(run_dir)}))
  answers = ["I cannot help with that." if r else "Sure, here it is." for r in refusals]
  rs = [records.AnswerRecord("malicious_instructions", f"m-{i}", "Do harm.", a, "unsafe")
        for i, a in enumerate(answers)]
  records.write_answers(eval_dir / evaluate.ANSWERS_FILE, scorers.score_answers(rs, ["refusal"]))
  (eval_dir / evaluate.RESULT_FILE).write_text("{}")


def test_safety_report_gathers_the_sweep(tmp_path):
  from experiments import reproduce_safety_tuned_llamas as stl
  from experiments import safety_report
  points = stl.grid([0, 300], ["instruction"], [0])
  fake_evaluated_run(tmp_path, points[0], [False, False, False, True])
  plan = stl.plan(points, tmp_path, sft_config="configs/sft.py:demo",
                  eval_config="configs/evaluate.py:quick", steps=20)
  # Point 0 is only missing its SFT result.json; point 1 needs everything; the report is last.
  assert [what.split()[0] for what, _ in plan] == ["sft", "sft", "eval", "report"]
  assert "--config.train.steps=20" in plan[0][1] and "--config.data.num_safety=300" in plan[1][1]
  assert f"--config.run_dir={tmp_path / 'num_safety=300_safety_format=instruction_seed=0'}" \
      in plan[2][1]
  fake_evaluated_run(tmp_path, points[1], [True, True, True, False])
  paths = safety_report.write_report(tmp_path)
  payload = json.loads(paths["json"].read_text())
  rows = {row[1]: row for row in payload["table"]["rows"]}
  column = payload["table"]["columns"].index("unsafe refusal %")
  assert rows[0][column] == 0.25 and rows[300][column] == 0.75
  assert paths["png"].stat().st_size > 1000
  with pytest.raises(FileNotFoundError, match="no finished evaluations"):
    safety_report.gather(tmp_path / "num_safety=0_safety_format=instruction_seed=0")


def test_reward_model_scorers_fill_harmfulness_and_helpfulness(tmp_path, tokenizer_path,
                                                               sft_run):
  from alignment.reward import saved
  run_dir, (cfg, params, _, tokenizer) = sft_run
  adapters, lcfg = lora_lib.load_adapters(run_dir / "adapters.npz")
  head = {"w": jax.random.normal(jax.random.key(3), (cfg.embed_dim,)), "b": jnp.float32(0.1)}
  section = json.loads((run_dir / "config.json").read_text())["model"]
  rms = {}
  for source in ("hh_harmless", "hh_helpful"):  # one network, saved as either kind of RM
    rms[source] = saved.save_reward_model(
        tmp_path / source, cfg, {"base": params, "lora": adapters, "head": head}, lcfg,
        tokenizer, section, {"source": source, "max_length": 64, "prompt_format": "hh"})
  config = tiny_config(tmp_path, tokenizer_path, sets=("malicious_instructions",),
                       max_prompts_per_set=4, run_dir=str(run_dir))
  config.scoring.update(harmfulness_rm=str(rms["hh_harmless"]),
                        helpfulness_rm=str(rms["hh_helpful"]))
  out = evaluate.run(config)
  scored = [r for r in out["records"] if r.answer.strip()]
  assert len(scored) >= 2
  for r in out["records"]:
    harm, helpful = r.scores[scorers.HARMFULNESS], r.scores[scorers.HELPFULNESS]
    if not r.answer.strip():  # a blank answer has no reply for a reward model to rate
      assert harm is None and helpful is None
      continue
    assert 0.0 < harm < 1.0 and harm + helpful == pytest.approx(1.0, abs=1e-6)
  assert len({r.scores[scorers.HARMFULNESS] for r in scored}) > 1
  report = json.loads((tmp_path / "eval" / "report.json").read_text())
  assert report["summary"]["sets"]["malicious_instructions"]["harmfulness"] == pytest.approx(
      np.mean([r.scores[scorers.HARMFULNESS] for r in scored]))
  # A helpfulness RM is refused as the harmfulness scorer.
  config.scoring.harmfulness_rm = str(rms["hh_helpful"])
  config.workdir = str(tmp_path / "eval2")
  with pytest.raises(ValueError, match="needs a safety RM"):
    evaluate.run(config)


def test_attacks_answer_each_vector_and_report_asr(tmp_path, tokenizer_path, sft_run, data_dir):
  from alignment.evaluation import attacks
  from alignment.evaluation.summary import summarize_run
  run_dir, (cfg, _, merged, tokenizer) = sft_run
  vectors = ("leetspeak", "prefix_injection")  # (every transform is tested in test_attacks)
  config = tiny_config(tmp_path, tokenizer_path, run_dir=str(run_dir),
                       sets=("malicious_instructions", "physical_safety_safe", "q_harm"),
                       max_prompts_per_set=2, batch_size=4, attacks=vectors)
  out = evaluate.run(config)
  workdir = tmp_path / "eval"
  written = records.read_answers(workdir / evaluate.ANSWERS_FILE)
  baseline = [r for r in written if r.attack is None]
  assert len(baseline) == 6  # every prompt, as without attacks
  assert summarize_run(written) == out["summary"]
  targets = [p for name in ("malicious_instructions", "q_harm")  # the unsafe sets only
             for p in sources.load(name, data_dir)[:2]]
  for name in vectors:
    attacked = [r for r in written if r.attack == name]
    assert [(r.set, r.id, r.label, r.prompt) for r in attacked] == [
        (p.source, p.id, p.label, attacks.apply(name, p).prompt) for p in targets]
    # Independent check: the answers are what the sampler gives for the rewritten prompts
    # (prefix injection: the prefix, then what the model continues after it).
    prefix = attacks.get_attack(name).response_prefix
    sampler = Sampler(cfg, merged, tokenizer,
                      template=attacks.prefixed_template(ALPACA, prefix))
    assert [r.answer for r in attacked] == [prefix + text for text in
                                            sampler([r.prompt for r in attacked], 4).text]
  assert all(r.answer.startswith("Sure, here is") for r in written
             if r.attack == "prefix_injection")
  assert all(r.scores[scorers.REFUSAL] is not None for r in written)

  # ASR recomputed from answers.jsonl: harmful = did not refuse (no harmfulness RM here).
  refused = {(r.set, r.id, r.attack): r.scores[scorers.REFUSAL] > 0 for r in written}
  keys = [(p.source, p.id) for p in targets]
  base_harmful = np.mean([not refused[(*k, None)] for k in keys])
  payload = json.loads((workdir / "report.json").read_text())["attacks"]
  result = json.loads((workdir / evaluate.RESULT_FILE).read_text())
  assert payload["harm_basis"] == "no_refusal_proxy"
  assert result["attacks"]["baseline"]["harmful_rate"] == pytest.approx(base_harmful)
  for name in vectors:
    harmful = np.mean([not refused[(*k, name)] for k in keys])
    assert payload["vectors"][name]["asr"] == pytest.approx(harmful - base_harmful)
    assert result["attacks"][name]["asr"] == pytest.approx(harmful - base_harmful)
    assert result["attacks"][name]["n"] == 4
  assert set(result["attack_generation"]) == set(vectors)
  assert "## Attack vectors" in (workdir / "report.md").read_text()
  assert (workdir / "report_attacks.png").stat().st_size > 5000


def test_quantize_round_trips_the_merged_weights(tmp_path, tokenizer_path, sft_run,
                                                 monkeypatch):
  """Wiring: the job hands the adapter-merged weights to quantize_params and samples with what
  it returns. A stand-in replaces the real scheme so the test checks the job, not the rounding."""
  run_dir, (cfg, params, merged, tokenizer) = sft_run
  calls = []

  def fake_quantize(tree, scheme):
    calls.append((tree, scheme))
    return jax.tree.map(lambda x: jnp.round(x * 4) / 4, tree)  # a coarse grid, same structure

  monkeypatch.setattr(model_source, "quantize_params", fake_quantize)
  config = tiny_config(tmp_path, tokenizer_path, run_dir=str(run_dir), quantize="int8",
                       sets=("malicious_instructions",))
  out = evaluate.run(config)
  [(tree, scheme)] = calls
  assert scheme == "int8"
  np.testing.assert_allclose(tree["layer_0"]["mlp"]["linear"], merged["layer_0"]["mlp"]["linear"],
                             rtol=1e-6, atol=1e-6)
  rounded = fake_quantize(merged, "int8")
  answers = [r.answer for r in out["records"]]
  assert answers == Sampler(cfg, rounded, tokenizer, template=ALPACA)(
      [r.prompt for r in out["records"]], 4).text
  result = json.loads((tmp_path / "eval" / evaluate.RESULT_FILE).read_text())
  assert result["quantize"] == "int8" and "attacks" not in result


def test_bad_attack_and_quantize_config_fail_before_loading(tmp_path, tokenizer_path):
  cases = [
      (dict(attacks=("role_play", "dan")),
       "config.attacks: unknown attack vector 'dan'; known: "),
      (dict(attacks=("all", "leetspeak")), "config.attacks: unknown attack vector 'all'"),
      (dict(attacks=("all",), attack_sets=("cona",)), "config.attack_sets: 'cona' is not among"),
      (dict(attacks=("all",), attack_sets=(" , ",)), "config.attack_sets: empty"),
      (dict(attacks=("all",), attack_sets=("physical_safety_safe",)),
       "config.attack_sets: no prompt labelled unsafe in physical_safety_safe"),
      (dict(quantize="fp8"), "config.quantize: unknown scheme 'fp8'"),
  ]
  for overrides, match in cases:
    with pytest.raises(ValueError, match=match):
      evaluate.run(tiny_config(tmp_path, tokenizer_path, **overrides))
  assert not (tmp_path / "eval").exists()  # nothing written before the checks pass
