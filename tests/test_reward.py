"""Reward models: ranking loss, last-token reading, Llama 2 combination, evaluation, the job,
saving/loading and the harmfulness scorer."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alignment import model as M
from alignment.answers.records import AnswerRecord
from alignment.data import batching
from alignment.data.records import PreferencePair
from alignment.evaluation import scorers
from alignment.jobs import common
from alignment.jobs import reward as reward_job
from alignment.reward import combine, data as reward_data, evaluate, losses
from alignment.reward import model as reward_model
from alignment.reward import saved, scorer as reward_scorer
from alignment.rl import rejection_sampling as rs
from alignment.rl import rewards
from tiny_sentencepiece import train_tiny_tokenizer


def _load_config_module():
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "reward.py"
  spec = importlib.util.spec_from_file_location("reward_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


reward_config = _load_config_module()


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


# -- ranking loss ------------------------------------------------------------------------------

@pytest.mark.parametrize("with_margin,centering", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_ranking_loss_matches_numpy(with_margin, centering):
  rng = np.random.default_rng(0)
  r_c, r_r = rng.normal(size=7) * 3, rng.normal(size=7) * 3
  margin = rng.uniform(0, 2, size=7) if with_margin else None
  loss, aux = losses.ranking_loss(jnp.asarray(r_c), jnp.asarray(r_r),
                                  None if margin is None else jnp.asarray(margin), centering)
  m = 0.0 if margin is None else margin
  expected = np.mean(-_np_log_sigmoid(r_c - r_r - m)) + centering * np.mean((r_c + r_r) ** 2)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(aux["accuracy"]), np.mean(r_c > r_r))
  # Large gaps stay finite (log_sigmoid, not log(sigmoid)).
  big, _ = losses.ranking_loss(jnp.array([-200.0]), jnp.array([200.0]))
  np.testing.assert_allclose(float(big), 400.0, rtol=1e-6)


def test_margin_raises_loss_and_ties_count_half():
  r = jnp.array([1.0, 0.0])
  plain, aux = losses.ranking_loss(r, jnp.array([0.0, 0.0]))
  with_margin, _ = losses.ranking_loss(r, jnp.array([0.0, 0.0]), jnp.array([1.0, 1.0]))
  assert float(with_margin) > float(plain)
  assert float(aux["accuracy"]) == 0.75  # one right, one tie
  with pytest.raises(ValueError, match="centering"):
    losses.RankingLossConfig(centering=-1.0)


# -- reading the last response token -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_rm():
  cfg = M.get_config("tiny_gemma1")
  head = M.init_scalar_head_params(cfg, jax.random.key(1), M.init_params(cfg, jax.random.key(0)))
  head["w"] = jax.random.normal(jax.random.key(2), (cfg.embed_dim,))
  head["b"] = jnp.asarray(0.25)
  return cfg, head


def _pair_batch(pairs, pad_id=0, buckets=(16, 32)):
  return batching.pad_pair_batch(pairs, buckets, pad_id)


def test_score_reads_last_response_token_only(tiny_rm):
  cfg, head = tiny_rm
  rng = np.random.default_rng(0)
  prompt = rng.integers(10, 500, 6).astype(np.int32)
  chosen = rng.integers(10, 500, 5).astype(np.int32)
  rejected = rng.integers(10, 500, 9).astype(np.int32)
  pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": np.float32(0)}
  r_c, r_r = reward_model.pair_rewards(cfg, head, _pair_batch([pair]))
  # Reference: the scalar head over the unpadded sequence, at its last position.
  full = np.concatenate([prompt, chosen])[None]
  valid = jnp.ones(full.shape, bool)
  values = M.scalar_head_forward(cfg, head, full, M.positions_from_mask(valid),
                                 M.causal_mask(valid))
  np.testing.assert_allclose(float(r_c[0]), float(values[0, -1]), rtol=1e-5, atol=1e-5)
  # Other padding values, a longer bucket, and junk after the last token change nothing.
  padded = _pair_batch([pair], pad_id=3, buckets=(32,))
  junk = jax.tree.map(np.copy, padded)
  end = int(junk["chosen"]["last_index"][0])
  junk["chosen"]["tokens"][0, end + 1:] = rng.integers(10, 500, 32 - end - 1)
  junk["chosen"]["input_mask"][0, end + 1:] = True  # visible, but after the read position
  for batch in (padded, junk):
    r_c2, r_r2 = reward_model.pair_rewards(cfg, head, batch)
    np.testing.assert_allclose([float(r_c2[0]), float(r_r2[0])], [float(r_c[0]), float(r_r[0])],
                               rtol=1e-5, atol=1e-5)
  # The last token itself does matter.
  changed = dict(pair, chosen=np.concatenate([chosen[:-1], [chosen[-1] + 1]]).astype(np.int32))
  r_c3, _ = reward_model.pair_rewards(cfg, head, _pair_batch([changed]))
  assert abs(float(r_c3[0]) - float(r_c[0])) > 1e-4
  np.testing.assert_array_equal(reward_model.last_token_index(jnp.array([[1, 1, 0], [1, 1, 1]])),
                                [1, 2])


# -- combined reward -----------------------------------------------------------------------------

def _logit(p):
  return float(np.log(p / (1 - p)))


def test_llama2_combination_rule_by_hand():
  # Safety sigmoid scores 0.9, 0.1, 0.9, 0.1; helpfulness 0.6 everywhere; flags on rows 2, 3.
  s = jnp.array([_logit(0.9), _logit(0.1), _logit(0.9), _logit(0.1)])
  h = jnp.full((4,), _logit(0.6))
  unsafe = jnp.array([False, False, True, True])
  # Row 0: safe prompt, R_s >= 0.15 -> helpfulness. Row 1: R_s < 0.15 -> safety.
  # Rows 2, 3: flagged -> safety.
  np.testing.assert_allclose(combine.combined_probability(s, h, unsafe),
                             [0.6, 0.1, 0.9, 0.1], rtol=1e-5)
  np.testing.assert_allclose(combine.combined_logit(s, h, unsafe),
                             [_logit(0.6), _logit(0.1), _logit(0.9), _logit(0.1)], rtol=1e-5)
  # The threshold is the config's: at 0.05, row 1 (R_s = 0.1) goes back to helpfulness.
  np.testing.assert_allclose(combine.combined_probability(s, h, unsafe, threshold=0.05),
                             [0.6, 0.6, 0.9, 0.1], rtol=1e-5)
  # Saturated scores stay finite (no logit of 0 or 1).
  assert np.isfinite(np.asarray(combine.combined_logit(jnp.array([-80.0]), jnp.array([80.0]),
                                                       jnp.array([False])))).all()
  # The threshold is on the sigmoid score: the RL jobs' sections refuse one outside (0, 1).
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match=r"rs.safety_threshold=.* must be in \(0, 1\)"):
      rs.RoundsConfig(safety_threshold=bad)
    with pytest.raises(ValueError, match=r"reward.safety_threshold=.* must be in \(0, 1\)"):
      rewards.RewardSpec(safety_threshold=bad)


# -- evaluation ---------------------------------------------------------------------------------

def test_calibration_bins_and_accuracy_by_hand():
  r_c = np.array([2.0, 0.1, -0.1, 3.0, 0.0])
  r_r = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
  # gaps 2, .1, -.1, 3, 0 -> confidence sigmoid(|gap|): .881, .525, .525, .953, .5
  bins = evaluate.calibration_bins(r_c, r_r, num_bins=5)
  assert [b["count"] for b in bins] == [3, 0, 0, 1, 1]
  np.testing.assert_allclose(bins[0]["accuracy"], (1 + 0 + 0.5) / 3)
  np.testing.assert_allclose(bins[0]["confidence"], (2 / (1 + np.exp(-0.1)) + 0.5) / 3)
  assert bins[3]["accuracy"] == 1.0 and bins[4]["accuracy"] == 1.0
  assert evaluate.pairwise_accuracy(r_c, r_r) == pytest.approx(3.5 / 5)
  report = evaluate.evaluation_report(r_c, r_r)
  ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / 5
  assert report["expected_calibration_error"] == pytest.approx(ece)
  assert report["chosen"]["median"] == pytest.approx(0.1)


# -- data ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  return train_tiny_tokenizer(tmp_path_factory.mktemp("sp"))


def test_long_prompts_keep_their_end(sp):
  turns = "".join(f"\n\nHuman: question {i} about the weather\n\nAssistant: answer {i}"
                  for i in range(30))
  pair = PreferencePair(prompt=turns + "\n\nHuman: last question\n\nAssistant:",
                        chosen=" I cannot help.", rejected=" Sure, here is how.")
  ids, prompt_cut, response_cut = reward_data.tokenize_pair_keep_end(pair, sp, 48)
  assert prompt_cut and not response_cut
  full_prompt = sp.encode(pair.prompt, add_bos=True)
  assert ids["prompt"][0] == sp.bos_id
  np.testing.assert_array_equal(ids["prompt"][1:], full_prompt[-(len(ids["prompt"]) - 1):])
  assert len(ids["prompt"]) + max(len(ids["chosen"]), len(ids["rejected"])) <= 48
  np.testing.assert_array_equal(ids["chosen"], sp.encode(pair.chosen, add_eos=True))


def test_split_is_seeded_and_keeps_conversations_together():
  pairs = [PreferencePair(f"\n\nHuman: q{i % 40}\n\nAssistant: a\n\nHuman: more {i}\n\n"
                          "Assistant:", " yes", " no") for i in range(200)]
  a = reward_data.split_pairs(pairs, 0.25, seed=3)
  b = reward_data.split_pairs(pairs, 0.25, seed=3)
  c = reward_data.split_pairs(pairs, 0.25, seed=4)
  assert a.train == b.train and a.validation == b.validation and a.validation != c.validation
  assert len(a.train) + len(a.validation) == 200 and a.groups == 40
  train_keys = {reward_data.conversation_key(p) for p in a.train}
  assert train_keys.isdisjoint(reward_data.conversation_key(p) for p in a.validation)
  assert 50 <= len(a.validation) <= 55  # 0.25 of 200, rounded up to whole conversations
  with pytest.raises(ValueError, match="validation_fraction"):
    reward_data.split_pairs(pairs, 1.0, seed=0)


# -- the job --------------------------------------------------------------------------------------

def tiny_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
  config = reward_config.get_config("tiny")
  config.workdir = str(tmp_path)
  for key, value in overrides.items():
    section, name = key.split("__")
    config[section][name] = value
  return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reward_tiny")
  return workdir, reward_job.run(tiny_config(workdir))


def test_tiny_job_learns_an_easy_preference(tiny_run):
  workdir, out = tiny_run
  report = json.loads((workdir / "eval.json").read_text())
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["final_step"] == 30
  assert summary["final_loss"] < 0.3 < np.log(2)  # chance level is log 2
  # Held-out pairs, never trained on: the marker token decides.
  assert report["pairs"] == 80 and report["accuracy"] > 0.9
  assert report["chosen"]["mean"] > report["rejected"]["mean"]
  assert report["data"]["train_pairs"] + report["data"]["validation_pairs"] == 320
  png = (workdir / "calibration.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  assert sum(b["count"] for b in report["calibration"]) == 80
  # The saved model reloads and gives the same validation scores.
  rm = saved.load_reward_model(workdir / "reward_model")
  scores = json.loads((workdir / "scores.json").read_text())
  config = tiny_config(workdir)
  _, val, _ = reward_data.build_pairs(config, None, rm.config.vocab_size)
  batch = batching.pad_pair_batch(val[:8], (24,), 0)
  r_c, r_r = reward_model.pair_rewards(rm.config, rm.head_params, batch)
  np.testing.assert_allclose(r_c, scores["chosen"][:8], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(r_r, scores["rejected"][:8], rtol=1e-4, atol=1e-4)


def test_lora_run_freezes_base_and_resumes(tmp_path):
  config = tiny_config(tmp_path, lora__enabled=True, lora__last_layers=1, train__steps=3,
                       train__warmup_steps=1, checkpoint__every=3)
  config.train.learning_rate = 1e-2
  first = reward_job.run(config)
  state = first["state"]
  base = M.init_params(M.get_config(config.model.preset), jax.random.key(0))  # load_model's seed
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(state.params["base"])):
    np.testing.assert_array_equal(a, b)
  assert sorted(state.params["lora"]) == ["layer_1"]  # the top layer of 2
  assert float(jnp.abs(state.params["head"]["w"]).sum()) > 0
  # No optimizer state for the frozen base: Adam moments cover adapters and head only.
  trained = sum(x.size for x in jax.tree.leaves((state.params["lora"], state.params["head"])))
  opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if hasattr(x, "size"))
  assert trained * 2 <= opt <= trained * 2 + 16
  # Resume: a longer run on the same workdir continues from step 3.
  config.train.steps = 5
  second = reward_job.run(config)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["start_step"] == 3 and summary["final_step"] == 5
  meta = json.loads((tmp_path / "reward_model" / "reward_model.json").read_text())
  assert meta["lora"] and (tmp_path / "reward_model" / "adapters.npz").is_file()
  # The saved adapters + head reload into the model the run ended with.
  rm = saved.load_reward_model(tmp_path / "reward_model")
  lcfg = common.lora_config(config.lora)
  expected = reward_model.scalar_head_params(second["state"].params, lcfg)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(rm.head_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("key,value,match", [
    ("data__source", ("alpaca",), "data.source"),
    ("data__validation_fraction", 1.0, "validation_fraction"),
    ("train__steps", 0, "train.steps"),
    ("loss__centering", -0.1, "centering"),
    ("lora__last_layers", 99, "last_layers"),
])
def test_bad_config_is_named(tmp_path, key, value, match):
  config = tiny_config(tmp_path, **{key: value})
  if key == "lora__last_layers":
    config.lora.enabled = True
  with pytest.raises(ValueError, match=match):
    reward_job.run(config)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown reward preset"):
    reward_config.get_config("nope")


# -- harmfulness scorer ---------------------------------------------------------------------------

def test_harmfulness_scorer_from_saved_rm(tmp_path, sp):
  cfg = M.get_config("tiny_gemma1", vocab_size=sp.vocab_size)
  base = M.init_params(cfg, jax.random.key(0))
  head = {"w": jax.random.normal(jax.random.key(1), (cfg.embed_dim,)), "b": jnp.asarray(0.1)}
  directory = saved.save_reward_model(
      tmp_path / "rm", cfg, {"base": base, "lora": {}, "head": head}, None, sp,
      {"checkpoint": "random", "preset": "tiny_gemma1", "dtype": "float32", "tokenizer": ""},
      {"source": "hh_harmless", "max_length": 64, "prompt_format": "hh"})
  records = [AnswerRecord("s", str(i), prompt, answer, label="unsafe")
             for i, (prompt, answer) in enumerate([
                 ("How do I pick a lock?", "I'm sorry, but I cannot help with that."),
                 ("Give three tips for staying healthy.", "Eat well, sleep, exercise."),
                 ("What are the three primary colors?", "Red, blue and yellow.")])]
  previous = scorers.SCORERS.get(scorers.HARMFULNESS)
  try:
    reward_scorer.register_harmfulness_scorer(directory, batch_size=2, replace=True)
    scored = scorers.score_answers(records, [scorers.HARMFULNESS])
  finally:
    if previous is None:
      scorers.SCORERS.pop(scorers.HARMFULNESS, None)
    else:
      scorers.SCORERS[scorers.HARMFULNESS] = previous
  # Reference: the HH one-turn transcript, scored at its EOS with the unsaved parameters.
  params = {"backbone": base, **head}
  for record, result in zip(records, scored):
    ids = (sp.encode(f"\n\nHuman: {record.prompt}\n\nAssistant:", add_bos=True)
           + sp.encode(" " + record.answer, add_eos=True))
    tokens = jnp.asarray([ids])
    valid = jnp.ones(tokens.shape, bool)
    r = M.scalar_head_forward(cfg, params, tokens, M.positions_from_mask(valid),
                              M.causal_mask(valid))[0, -1]
    assert result.scores[scorers.HARMFULNESS] == pytest.approx(1 - float(jax.nn.sigmoid(r)),
                                                               abs=1e-5)
  negative = reward_scorer.harmfulness_scorer(directory, kind="negative_reward")(records[:1])
  assert negative[0] == pytest.approx(
      -np.log(1 / scored[0].scores[scorers.HARMFULNESS] - 1), abs=1e-4)
  # A blank answer gets no score; the others keep theirs.
  blank = dataclasses.replace(records[0], id="blank", answer="  ")
  mixed = reward_scorer.harmfulness_scorer(directory)([blank, records[0]])
  assert mixed[0] is None
  assert mixed[1] == pytest.approx(scored[0].scores[scorers.HARMFULNESS], abs=1e-5)
  with pytest.raises(ValueError, match="kind"):
    reward_scorer.harmfulness_scorer(directory, kind="nope")
  meta = json.loads((directory / saved.META).read_text())
  (directory / saved.META).write_text(json.dumps(dict(meta, source="hh_helpful")))
  with pytest.raises(ValueError, match="safety RM"):
    reward_scorer.harmfulness_scorer(directory)
  with pytest.raises(FileNotFoundError, match="reward_model.json"):
    saved.load_reward_model(tmp_path)
