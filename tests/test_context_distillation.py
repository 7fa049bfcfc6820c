"""Context distillation: generation sees the preprompt, training examples do not; targeted
filtering keeps exactly the improved answers; the job end to end on a tiny model."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from alignment.data import tokenize as tok
from alignment.jobs import context_distillation as cd_job
from alignment.jobs import common
from alignment.prompts import ALPACA, GEMMA_CHAT
from alignment.rl import context_distillation as cd
from configs import context_distillation as cd_config
from tiny_sentencepiece import train_tiny_tokenizer

PREPROMPT = "Stay safe: refuse harmful requests."


class RecordingSampler:
  def __init__(self):
    self.inputs: list[str] = []

  def __call__(self, inputs, rng):
    del rng
    self.inputs.extend(inputs)
    return [f"answer {len(self.inputs) - len(inputs) + i}" for i in range(len(inputs))]


@pytest.mark.parametrize("template", [ALPACA, GEMMA_CHAT])
def test_generation_uses_the_preprompt_and_training_examples_do_not(template):
  prompts = ["How do I pick a lock?", "Write a poem about rain.", "Insult my neighbour."]
  sampler = RecordingSampler()
  samples = cd.generate(sampler, prompts, template, PREPROMPT, batch_size=2,
                        rng=jax.random.key(0), baseline=True)
  with_pre = [template.format(p, system=PREPROMPT) for p in prompts]
  bare = [template.format(p) for p in prompts]
  assert sampler.inputs == with_pre + bare
  assert all(PREPROMPT in x for x in with_pre) and not any(PREPROMPT in x for x in bare)
  assert samples.with_preprompt == ["answer 0", "answer 1", "answer 2"]
  assert samples.without_preprompt == ["answer 3", "answer 4", "answer 5"]
  examples = cd.training_examples(samples)
  assert [(e.instruction, e.output) for e in examples] == list(zip(prompts,
                                                                   samples.with_preprompt))
  for example, text in zip(examples, bare):
    assert tok.instruction_prompt(example, template) == text  # trained without the preprompt


def test_targeted_filtering_keeps_exactly_the_improved_answers():
  prompts = [f"p{i}" for i in range(6)]
  samples = cd.DistillationSamples(prompts, [f"a{i}" for i in range(6)],
                                   [f"b{i}" for i in range(6)])
  with_scores = np.array([0.9, 0.1, 0.5, 0.5, -1.0, 2.0])
  without_scores = np.array([0.2, 0.3, 0.5, 0.4, -2.0, 3.0])
  keep = cd.targeted_keep(with_scores, without_scores)
  assert keep.tolist() == [True, False, False, True, True, False]  # ties are not improvements
  examples = cd.training_examples(samples, keep)
  assert [(e.instruction, e.output) for e in examples] == [("p0", "a0"), ("p3", "a3"),
                                                           ("p4", "a4")]
  with pytest.raises(ValueError, match="same length"):
    cd.targeted_keep(with_scores, without_scores[:3])
  with pytest.raises(ValueError, match="non-empty preprompt"):
    cd.generate(RecordingSampler(), prompts, ALPACA, " ", 2, jax.random.key(0))


def test_targeted_distillation_job_on_a_tiny_model(tmp_path, monkeypatch, data_dir):
  train_tiny_tokenizer(tmp_path)
  config = cd_config.get_config("tiny")
  config.workdir = str(tmp_path / "run")
  config.model.tokenizer = str(tmp_path / "tiny_sp.model")
  seen_inputs: list[str] = []
  real = common.make_sample_fn

  def watching(cfg, params, tokenizer, section):
    sample = real(cfg, params, tokenizer, section)

    def sample_fn(inputs, rng):
      seen_inputs.extend(inputs)
      return sample(inputs, rng)

    return sample_fn

  monkeypatch.setattr(common, "make_sample_fn", watching)
  scores = {}

  def reward(prompts, answers):  # 1st call: answers with the preprompt, 2nd: without
    calls = scores.setdefault("calls", [])
    out = ((np.arange(len(answers)) % 3 != 0).astype(np.float64) if not calls
           else np.full(len(answers), 0.5))
    calls.append(out)
    return out

  out = cd_job.run(config, reward_fn=reward)
  n = config.data.num_prompts
  prompts = out["samples"].prompts
  assert seen_inputs == ([ALPACA.format(p, system="Be safe.") for p in prompts]
                         + [ALPACA.format(p) for p in prompts])
  expected_keep = scores["calls"][0] > scores["calls"][1]
  assert out["keep"].tolist() == expected_keep.tolist()
  rows = [json.loads(line) for line in
          (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
  assert len(rows) == n and [r["kept"] for r in rows] == expected_keep.tolist()
  kept_answers = [a for a, k in zip(out["samples"].with_preprompt, expected_keep)
                  if k and a.strip()]
  assert out["figures"]["examples"] == len(kept_answers)
  assert int(out["state"].step) == config.train.steps
