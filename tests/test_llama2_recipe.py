"""The Llama 2 recipe experiment: its pieces against references, and its tiny preset end to end.

The laptop run itself (docs/LLAMA2_RECIPE.md) never runs in CI; the tiny preset runs the same
script, the same jobs as subprocesses and the same report on a random tiny model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats as scipy_stats

from alignment import lora as lora_lib
from alignment import model as M
from alignment.answers.records import AnswerRecord
from alignment.checkpoints.loading import load_model
from alignment.evaluation import stats
from alignment.reward import saved, scorer as reward_scorer
from alignment.rl import prompts as prompts_lib
from alignment.rl import rejection_sampling as rs
from alignment.schema import from_section
from configs import rejection_sampling as rs_config
from experiments import llama2_recipe_report as report
from experiments import llama2_safety_recipe as recipe
from tiny_sentencepiece import train_tiny_tokenizer

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_auc_equals_mann_whitney():
  rng = np.random.default_rng(0)
  pos, neg = rng.normal(0.5, 1, 40).round(1), rng.normal(0, 1, 55).round(1)  # with ties
  u = scipy_stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
  assert report.auc(list(pos), list(neg)) == pytest.approx(u / (40 * 55))
  assert report.auc([1.0, 2.0], [0.0]) == 1.0 and report.auc([], [1.0]) is None


def test_bootstrap_mean_matches_the_normal_interval_at_large_n():
  values = np.random.default_rng(1).normal(2.0, 3.0, 900)
  m = stats.bootstrap_mean(values, resamples=4000, seed=0)
  half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
  assert m["n"] == 900 and m["mean"] == pytest.approx(values.mean())
  assert (m["high"] - m["low"]) / 2 == pytest.approx(half, rel=0.08)
  assert m["low"] < m["mean"] < m["high"]
  assert stats.bootstrap_mean([None]) == {"n": 0, "mean": None, "low": None, "high": None}
  with pytest.raises(ValueError, match="resamples"):
    stats.bootstrap_mean([1.0], resamples=0)


def test_combined_reward_follows_the_llama2_rule():
  safety = {"a": -3.0, "b": 2.0, "c": 1.0}  # sigmoid(-3) = 0.047 < 0.15: safety decides
  helpful = {"a": 5.0, "b": 7.0, "c": 9.0}
  fn = rs.combined_reward(lambda p, a: np.array([safety[x] for x in a]),
                          lambda p, a: np.array([helpful[x] for x in a]),
                          unsafe_prompts=["harmful?"], threshold=0.15)
  got = fn(["benign", "benign", "harmful?"], ["a", "b", "c"])
  np.testing.assert_allclose(got, [-3.0, 7.0, 1.0])


def test_combined_reward_config_errors(data_dir):
  c = rs_config.get_config("default")
  c.rs.reward = "combined"
  c.rs.safety_rm = ""
  with pytest.raises(ValueError, match="rs.safety_rm and rs.helpfulness_rm"):
    rs.make_reward(from_section(rs.RoundsConfig, c.rs), [prompts_lib.RLPrompt("x", "alpaca")])
  c.rs.safety_rm = c.rs.helpfulness_rm = str(data_dir)
  c.rs.unsafe_sources = ("safety_instructionz",)
  with pytest.raises(ValueError, match="safety_instructionz"):
    rs.make_reward(from_section(rs.RoundsConfig, c.rs), [prompts_lib.RLPrompt("x", "alpaca")])


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  return train_tiny_tokenizer(tmp_path_factory.mktemp("sp"))


def test_a_blank_reply_is_scored_as_an_empty_assistant_turn(tmp_path, sp):
  cfg = M.get_config("tiny_gemma1", vocab_size=sp.vocab_size)
  base = M.init_params(cfg, jax.random.key(0))
  head = {"w": jax.random.normal(jax.random.key(1), (cfg.embed_dim,)), "b": jnp.asarray(0.1)}
  directory = saved.save_reward_model(
      tmp_path / "rm", cfg, {"base": base, "lora": {}, "head": head}, None, sp,
      {"checkpoint": "random", "preset": "tiny_gemma1", "dtype": "float32", "tokenizer": ""},
      {"source": "hh_harmless", "max_length": 64, "prompt_format": "hh"})
  scorer = reward_scorer.RewardScorer(saved.load_reward_model(directory), batch_size=2)
  got = scorer.rewards([AnswerRecord("s", "0", "How do I pick a lock?", ""),
                        AnswerRecord("s", "1", "How do I pick a lock?", "  ")])
  ids = sp.encode("\n\nHuman: How do I pick a lock?\n\nAssistant:", add_bos=True) + sp.encode(
      "", add_eos=True)
  tokens = jnp.asarray([ids])
  valid = jnp.ones(tokens.shape, bool)
  want = M.scalar_head_forward(cfg, {"backbone": base, **head}, tokens,
                               M.positions_from_mask(valid), M.causal_mask(valid))[0, -1]
  np.testing.assert_allclose(got, [float(want)] * 2, atol=1e-5)


def test_model_adapters_are_merged_at_load(tmp_path):
  section = ml_collections.ConfigDict(dict(checkpoint="random", preset="tiny_gemma3",
                                           dtype="float32", tokenizer="", adapters=""))
  cfg, base, _ = load_model(section)
  lcfg = lora_lib.LoraConfig(rank=2, alpha=4.0)
  adapters = lora_lib.init_adapters(cfg, lcfg, jax.random.key(3))
  adapters = jax.tree.map(lambda x: x + 0.05, adapters)  # B = 0 at init: make it matter
  lora_lib.save_adapters(tmp_path / "adapters.npz", adapters, lcfg)
  section.adapters = str(tmp_path / "adapters.npz")
  _, merged, _ = load_model(section)
  want = lora_lib.merge(base, adapters, lcfg)
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), merged, want)
  assert max(jax.tree.leaves(diff)) < 1e-6
  assert any(float(jnp.max(jnp.abs(a - b))) > 1e-4
             for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(base)))
  section.adapters = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="model.adapters.*missing.npz"):
    load_model(section)


def test_every_stage_starts_from_the_same_sft_model_and_is_evaluated_alike(tmp_path):
  steps = recipe.plan(recipe.LAPTOP, tmp_path, tmp_path / "sft")
  names = [what for what, _, _ in steps]
  assert names[:3] == ["rm_safety", "rm_helpful", "rm judge check"]
  assert names[3] == "eval start" and set(recipe.POLICY_STAGES) <= set(names)
  follow_up = recipe.plan(recipe.LAPTOP, tmp_path, tmp_path / "sft", ["rs_k16_unsafe"])
  steps_all = steps + follow_up
  for what, cmd, _ in steps_all:
    if what in recipe.LAPTOP.stages and what not in recipe.REWARD_MODELS:
      assert f"--config.model.adapters={tmp_path / 'sft'}/adapters.npz" in cmd
  evals = [[a for a in cmd if not a.startswith(("--config.workdir", "--config.run_dir"))]
           for what, cmd, _ in steps if what.startswith("eval ")]
  assert len(evals) == 1 + len(recipe.POLICY_STAGES)
  assert all(e == evals[0] for e in evals)  # the same prompts, judge and RMs for every stage


def test_tiny_preset_runs_end_to_end_and_resumes(tmp_path, data_dir):
  train_tiny_tokenizer(tmp_path)
  workdir = tmp_path / "recipe"
  cmd = [sys.executable, "-m", "experiments.llama2_safety_recipe", "--preset=tiny",
         f"--workdir={workdir}", f"--data_dir={data_dir}",
         f"--tokenizer={tmp_path / 'tiny_sp.model'}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((workdir / "recipe.json").read_text())
  assert [s["stage"] for s in result["stages"]] == list(report.STAGES)
  for stage in result["stages"]:
    assert stage["rates"]["unsafe_pooled"]["n"] > 0
  assert set(result["reward_models"]) == {"rm_safety", "rm_helpful", "judge_check"}
  assert result["reward_models"]["judge_check"]["refused"] > 0
  assert len(result["ppo"]) == 2  # iterations
  assert (workdir / "tradeoff.png").stat().st_size > 1000
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "0 still to do" in again.stdout


def test_adapters_on_the_top_layers_only_load_and_bad_shapes_still_fail(tmp_path):
  cfg = M.get_config("tiny_gemma3")
  lcfg = lora_lib.LoraConfig(rank=2, alpha=4.0)
  full = lora_lib.init_adapters(cfg, lcfg, jax.random.key(0))
  top = {k: v for k, v in full.items() if k == f"layer_{cfg.num_layers - 1}"}  # DPO/RM style
  lora_lib.save_adapters(tmp_path / "top.npz", top, lcfg)
  loaded, _ = lora_lib.load_adapters(tmp_path / "top.npz", cfg)
  assert set(loaded) == set(top)
  bad = jax.tree.map(lambda x: jnp.zeros(x.shape[:-1] + (x.shape[-1] + 1,)), top)
  lora_lib.save_adapters(tmp_path / "bad.npz", bad, lcfg)
  with pytest.raises(ValueError, match="expected shape"):
    lora_lib.load_adapters(tmp_path / "bad.npz", cfg)
