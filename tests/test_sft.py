"""The SFT job end to end on a tiny random model: trains, evaluates, saves, resumes."""

import json

import jax
import numpy as np
import pytest

from alignment import lora as lora_lib
from alignment.jobs import sft
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
