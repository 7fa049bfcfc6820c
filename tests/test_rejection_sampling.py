"""Rejection sampling: best-of-K selection against an independent reference, the SFT data it
builds, and two rounds end to end on a tiny model (round 2 samples from the trained policy)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from alignment.data.records import PreferencePair
from alignment.jobs import common
from alignment.jobs import rejection_sampling as rs_job
from alignment.rl import prompts as prompts_lib
from alignment.rl import rejection_sampling as rs
from configs import rejection_sampling as rs_config
from tiny_sentencepiece import train_tiny_tokenizer


class FakeSampler:
  """Answers '<input>#<n>' with n counting calls per input; records every batch it gets."""

  def __init__(self):
    self.batches: list[list[str]] = []
    self.counts: dict[str, int] = {}

  def __call__(self, inputs, rng):
    del rng
    self.batches.append(list(inputs))
    out = []
    for x in inputs:
      n = self.counts.get(x, 0)
      self.counts[x] = n + 1
      out.append(f"{x}#{n}")
    return out


def test_best_of_k_keeps_the_argmax_reward_answer_per_prompt():
  prompts = [f"prompt {i}" for i in range(5)]
  sampler = FakeSampler()
  candidates = rs.sample_candidates(sampler, prompts, num_samples=4, batch_size=3,
                                    rng=jax.random.key(0))
  # K answers per prompt, in order; batches of 3 over the 20 repeated inputs.
  assert [len(b) for b in sampler.batches] == [3, 3, 3, 3, 3, 3, 2]
  assert candidates == [[f"{p}#{n}" for n in range(4)] for p in prompts]
  table = {a: float(v) for a, v in zip(
      [a for c in candidates for a in c], np.random.default_rng(1).normal(size=20))}
  calls = []

  def reward(ps, answers):
    calls.append((list(ps), list(answers)))
    return np.asarray([table[a] for a in answers])

  rewards = rs.score_candidates(reward, prompts, candidates)
  assert calls[0][0] == [p for p in prompts for _ in range(4)]  # each answer with its prompt
  best = rs.select_best(prompts, candidates, rewards)
  for prompt, kept in zip(prompts, best):
    mine = [a for a in table if a.startswith(prompt + "#")]
    expected = max(mine, key=lambda a: table[a])
    assert kept.prompt == prompt and kept.answer == expected
    assert kept.reward == table[expected] and kept.index == int(expected.split("#")[1])
  examples = rs.training_examples(best)
  assert [(e.instruction, e.output) for e in examples] == [(b.prompt, b.answer) for b in best]
  high = rs.training_examples(best, min_reward=0.5)
  assert [e.instruction for e in high] == [b.prompt for b in best if b.reward >= 0.5]


def test_named_rewards_and_errors():
  assert rs.get_reward("length")(["p", "p"], ["a b c", ""]).tolist() == [3.0, 0.0]
  refusal = rs.get_reward("refusal")(["p", "p"], ["I'm sorry, but I cannot help with that.",
                                                  "Sure, here are three tips."])
  assert refusal[0] > refusal[1]
  with pytest.raises(ValueError, match="neither a named reward"):
    rs.get_reward("no_such_reward")
  with pytest.raises(ValueError, match="returned shape"):
    rs.score_candidates(lambda p, a: np.zeros(1), ["x"], [["a", "b"]])
  with pytest.raises(ValueError, match="num_samples"):
    rs.sample_candidates(FakeSampler(), ["x"], 0, 2, jax.random.key(0))


def test_two_rounds_on_a_tiny_model(tmp_path, monkeypatch, data_dir):
  train_tiny_tokenizer(tmp_path)
  config = rs_config.get_config("tiny")
  config.workdir = str(tmp_path / "run")
  config.model.tokenizer = str(tmp_path / "tiny_sp.model")
  seen_params = []
  real = common.make_sample_fn

  def watching(cfg, params, tokenizer, section):
    seen_params.append(jax.device_get(params))
    return real(cfg, params, tokenizer, section)

  monkeypatch.setattr(common, "make_sample_fn", watching)
  out = rs_job.run(config)
  assert [r["round"] for r in out["rounds"]] == [0, 1]
  assert int(out["state"].step) == 2 * config.train.steps
  # Round 1 sampled from the policy round 0 trained, not from the start.
  assert len(seen_params) == 2
  diffs = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(seen_params[0]),
                                               jax.tree.leaves(seen_params[1]))]
  assert max(diffs) > 0
  for r in range(2):
    rows = [json.loads(line) for line in
            (tmp_path / "run" / f"round_{r}" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == config.data.num_prompts
    for row in rows:
      words = [len(c.split()) for c in row["candidates"]]
      assert row["rewards"] == words and row["best"] == int(np.argmax(words))
      assert len(row["candidates"]) == config.rs.num_samples


def test_prompts_are_distinct_seeded_and_capped(data_dir):
  """One loader serves PPO (per-source caps, sources kept) and the sampling jobs (a total)."""
  capped = prompts_lib.load_prompts("safety_instructions, hh_harmless", str(data_dir), seed=3,
                                    per_source=20)
  texts = [p.text for p in capped]
  assert len(set(texts)) == len(texts) == 40
  assert {p.source for p in capped} == {"safety_instructions", "hh_harmless"}
  for p in capped:
    assert p.text.strip() and "Human:" not in p.text and "Assistant:" not in p.text
  assert capped == prompts_lib.load_prompts(["safety_instructions", "hh_harmless"],
                                            str(data_dir), seed=3, per_source=20)
  every = prompts_lib.load_prompts("safety_instructions", str(data_dir), seed=5)
  assert prompts_lib.load_prompts("safety_instructions", str(data_dir), seed=5,
                                  num_prompts=10) == every[:10]
  assert [p.text for p in every] != [p.text for p in prompts_lib.load_prompts(
      "safety_instructions", str(data_dir), seed=6)]
  with pytest.raises(ValueError, match=f"hold only {len(every)} distinct"):
    prompts_lib.load_prompts("safety_instructions", str(data_dir), 0, len(every) + 1)
  with pytest.raises(ValueError, match="no prompt sources"):
    prompts_lib.load_prompts(" , ", str(data_dir), 0)


def test_only_one_turn_hh_conversations_give_a_prompt():
  one = PreferencePair(prompt="\n\nHuman: How do I bake bread?\n\nAssistant:", chosen="a",
                       rejected="b")
  two = PreferencePair(prompt="\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bread?\n\nAssistant:",
                       chosen="a", rejected="b")
  assert prompts_lib.record_prompt(one) == "How do I bake bread?"
  assert prompts_lib.record_prompt(two) is None
  with pytest.raises(ValueError, match="'xs': cannot take a prompt from a str"):
    prompts_lib.record_prompt("text", "xs")


def test_rounds_config_refuses_zero_rounds_or_samples_naming_the_key():
  assert rs.RoundsConfig(use_min_reward=True, min_reward=0.5).reward_floor == 0.5
  assert rs.RoundsConfig(min_reward=0.5).reward_floor is None
  with pytest.raises(ValueError, match=r"rs.rounds=0 must be >= 1"):
    rs.RoundsConfig(rounds=0)
  with pytest.raises(ValueError, match=r"rs.num_samples=0 must be >= 1"):
    rs.RoundsConfig(num_samples=0)
