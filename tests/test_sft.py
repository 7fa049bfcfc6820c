"""The SFT job end to end on a tiny random model: trains, evaluates, saves, resumes."""

import json

import jax
import numpy as np
import pytest

from alignment import lora as lora_lib
from alignment.jobs import sft
from alignment.training import losses
from configs import sft as sft_config
from tiny_sentencepiece import train_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tok")
  train_tiny_tokenizer(directory)
  return str(directory / "tiny_sp.model")


def tiny_config(tmp_path, tokenizer_path, **train):
  config = sft_config.get_config("tiny")
  config.workdir = str(tmp_path / "run")
  config.model.tokenizer = tokenizer_path
  config.train.update(train)
  return config


def test_tiny_lora_sft_learns_and_writes_its_outputs(tmp_path, tokenizer_path, data_dir):
  config = tiny_config(tmp_path, tokenizer_path, steps=12, learning_rate=3e-3)
  config.eval.every = 6
  out = sft.run(config)
  history = out["history"]
  assert [h["step"] for h in history] == [6, 12]
  assert history[-1]["eval_loss"] < history[0]["eval_loss"]
  assert set(history[-1]["samples"]) == {"Say hi."}
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["train"]["status"] == "completed" and result["train"]["final_step"] == 12
  mixture = json.loads((tmp_path / "run" / "mixture.json").read_text())
  assert mixture["num_safety"] == 16
  assert result["train_examples"] == 48 + 16 and result["eval_examples"] == 8
  # Only the adapters trained; they are saved alone and reload with their config.
  adapters, lcfg = lora_lib.load_adapters(tmp_path / "run" / "adapters.npz")
  assert lcfg.rank == config.lora.rank
  state = out["state"]
  for a, b in zip(jax.tree.leaves(adapters), jax.tree.leaves(state.params["lora"])):
    np.testing.assert_allclose(a, np.asarray(b))
  # Frozen base: its optimizer state is empty, so Adam moments are adapter-sized.
  opt_size = sum(x.size for x in jax.tree.leaves(state.opt_state))
  lora_size = sum(x.size for x in jax.tree.leaves(state.params["lora"]))
  base_size = sum(x.size for x in jax.tree.leaves(state.params["base"]))
  assert opt_size < 3 * lora_size + 100 < base_size


def test_sft_resumes_from_its_checkpoint(tmp_path, tokenizer_path, data_dir):
  config = tiny_config(tmp_path, tokenizer_path, steps=6)
  first = sft.run(config)
  config.train.steps = 9
  second = sft.run(config)
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["train"]["start_step"] == 6 and result["train"]["final_step"] == 9
  assert int(second["state"].step) == 9 and int(first["state"].step) == 6
  # The frozen base is not in the checkpoints: a step holds the adapters and their moments
  # (plus metadata), well short of what adding the base would take.
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  state = second["state"]
  trained = nbytes(state.params["lora"]) + nbytes(state.opt_state)
  step_dir = tmp_path / "run" / "checkpoints" / "9"
  saved = sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file())
  assert trained < saved < trained + nbytes(state.params["base"]) / 2


def test_sft_config_errors(tmp_path, tokenizer_path):
  config = tiny_config(tmp_path, tokenizer_path)
  config.data.num_base = 0
  config.data.num_safety = 0
  with pytest.raises(ValueError, match="mixture is empty"):
    sft.run(config)
  with pytest.raises(ValueError, match="unknown sft preset"):
    sft_config.get_config("huge")


def test_unmerged_lora_and_chunked_loss_match_the_merged_full_logits_loss():
  """The SFT loss options change how the loss is computed, never its value or gradient."""
  from alignment.model import config as model_config
  from alignment.model import transformer
  cfg = model_config.get_config("tiny_gemma3")
  lcfg = lora_lib.LoraConfig(rank=4, alpha=8.0)
  base = transformer.init_params(cfg, jax.random.key(0))
  adapters = lora_lib.init_adapters(cfg, lcfg, jax.random.key(1))
  # B starts at zero; give it values so the adapters change the loss.
  adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape),
                          adapters)
  params = {"base": base, "lora": adapters}
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, size=(2, 24)).astype(np.int32)
  loss_mask = np.ones_like(tokens)
  loss_mask[:, :8] = 0  # prompt tokens are not targets
  batch = {"tokens": tokens, "loss_mask": loss_mask}

  def value_and_grad(**options):
    loss_fn = losses.sft_loss_fn(cfg, lcfg, **options)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, None)
    return loss, grads

  loss, grads = value_and_grad()
  for options in (dict(unmerged=True), dict(logits_chunk=5), dict(unmerged=True, logits_chunk=7)):
    other_loss, other_grads = value_and_grad(**options)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-5, err_msg=str(options))
    for got, want in zip(jax.tree.leaves(other_grads["lora"]), jax.tree.leaves(grads["lora"])):
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6, err_msg=str(options))
    assert all(not np.any(g) for g in jax.tree.leaves(other_grads["base"]))
