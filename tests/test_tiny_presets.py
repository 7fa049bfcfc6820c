"""Every job's `tiny` preset runs as given (no flag): it builds its own tokenizer, and its
random model is not saturated, so the figures a newcomer sees first move.

Each preset runs in a temporary working directory (their workdirs are relative), in-process
as `alignment.main` runs it; one runs through the command line itself.
"""

from __future__ import annotations

import importlib
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment.checkpoints.loading import load_model
from alignment.model import forward
from alignment.tokenizer import tiny as tiny_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_preset(job: str, directory: pathlib.Path, monkeypatch) -> dict:
  """`python -m alignment.main --config=configs/<job>.py:tiny`, in-process, from `directory`."""
  monkeypatch.chdir(directory)
  config = importlib.import_module(f"configs.{job}").get_config("tiny")
  # Text jobs name the built-in tokenizer; reward and DPO's tiny presets train on synthetic
  # token pairs and need none.
  if config.get("data", {}).get("source") != ("synthetic",):
    assert config.model.tokenizer == tiny_tokenizer.NAME, job
  return importlib.import_module(f"alignment.jobs.{config.job}").run(config)


def test_tiny_tokenizer_is_deterministic_and_gemma_shaped():
  assert tiny_tokenizer.tiny_proto() == tiny_tokenizer.tiny_proto()
  tok = tiny_tokenizer.tiny_tokenizer()
  assert tok.vocab_size == tiny_tokenizer.VOCAB_SIZE
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert len(tok.encode("<start_of_turn>user")) == 1 + len(tok.encode("user"))
  text = "Give three tips for staying healthy. Ünïcode falls back to bytes."
  assert tok.decode(tok.encode(text)) == text


def test_random_tiny_model_starts_near_log_vocab():
  """Eval loss and entropy of the tiny presets' random model on real text: close to
  log(vocab) (a uniform guess), not the ~57 nats and ~1e-10 of a saturated init."""
  cfg, params, tok = load_model({"checkpoint": "random", "preset": "tiny_gemma3",
                                 "tokenizer": "tiny"})
  assert cfg.vocab_size == tok.vocab_size == 600
  ids = tok.encode("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request. What are the three primary colors?",
                   add_bos=True)
  tokens = jnp.asarray([ids])
  n = len(ids)
  logits, _ = forward(cfg, params, tokens, jnp.arange(n)[None],
                      jnp.tril(jnp.ones((n, n), bool))[None])
  logp = jax.nn.log_softmax(logits[0, :-1].astype(jnp.float32))
  loss = float(-jnp.take_along_axis(logp, tokens[0, 1:, None], -1).mean())
  entropy = float(-(jnp.exp(logp) * logp).sum(-1).mean())
  assert abs(loss - math.log(600)) < 0.3, loss
  assert abs(entropy - math.log(600)) < 0.3, entropy
  # The output is not uniform either: a gradient reaches the weights.
  assert float(jnp.std(logits)) > 1e-3


def test_sft_tiny(tmp_path, monkeypatch):
  out = run_preset("sft", tmp_path, monkeypatch)
  evals = [h["eval_loss"] for h in out["history"] if "eval_loss" in h]
  assert evals and all(abs(e - math.log(600)) < 0.5 for e in evals), evals
  assert (tmp_path / "runs/tiny_sft").is_dir()


def test_ppo_tiny_reward_and_kl_move(tmp_path, monkeypatch):
  out = run_preset("ppo", tmp_path, monkeypatch)
  history = out["history"]
  rewards = [h["reward"] for h in history]
  kls = [h["kl"] for h in history]
  assert len(history) == 4
  assert any(r > 0 for r in rewards), rewards
  assert abs(kls[0]) < 1e-4  # before the first update the policy is the reference
  assert any(abs(k) > 1e-4 for k in kls[1:]), kls  # then it moves away
  assert all(np.isfinite([h["policy_loss"], h["value_loss"]]).all() for h in history)
  assert any(h["value_loss"] > 0 for h in history)


def test_salience_tiny_gradients_are_not_vanishing(tmp_path, monkeypatch):
  result = run_preset("salience", tmp_path, monkeypatch)
  prompt = result.grad_l2[:result.prompt_length]
  assert np.isfinite(prompt).all()
  assert 1e-6 < float(np.median(prompt)) < 1e3, prompt
  assert (tmp_path / "salience.html").is_file()


def test_evaluate_tiny(tmp_path, monkeypatch):
  out = run_preset("evaluate", tmp_path, monkeypatch)
  assert len(out["records"]) == 16  # 2 prompts of each of the 8 default sets
  assert all(isinstance(r.answer, str) for r in out["records"])
  assert (tmp_path / "runs/evaluate_tiny/report.md").is_file()


@pytest.mark.parametrize("job", ["reward", "dpo", "rejection_sampling", "context_distillation",
                                 "template_eval"])
def test_other_tiny_presets_run(job, tmp_path, monkeypatch):
  out = run_preset(job, tmp_path, monkeypatch)
  assert out


def test_tiny_preset_from_the_command_line(tmp_path):
  """The command a newcomer types, with no flag but the config."""
  done = subprocess.run(
      [sys.executable, "-m", "alignment.main", f"--config={REPO}/configs/salience.py:tiny"],
      cwd=tmp_path, capture_output=True, text=True, timeout=600,
      env={**os.environ, "PYTHONPATH": str(REPO)})
  assert done.returncode == 0, done.stderr[-3000:]
  assert "wrote salience.html" in done.stdout
  assert (tmp_path / "salience.html").is_file()
