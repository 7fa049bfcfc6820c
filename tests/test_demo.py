"""The README's main job (`make run`) end to end on a tiny random model."""

import json

import jax
import numpy as np

from alignment import lora as lora_lib
from alignment.checkpoints.loading import load_model
from alignment.jobs import common, demo
from alignment.prompts import get_template
from alignment.sampling import Sampler
from configs import demo as demo_config
from tiny_sentencepiece import train_tiny_tokenizer


def test_demo_answers_before_and_after_its_sft_run(tmp_path, data_dir, capsys):
  train_tiny_tokenizer(tmp_path)
  config = demo_config.get_config()
  config.workdir = str(tmp_path / "run")
  config.model.update(checkpoint="random", preset="tiny_gemma3",
                      tokenizer=str(tmp_path / "tiny_sp.model"))
  config.data.update(num_base=16, num_safety=16, max_length=128)
  config.train.update(steps=2, log_every=1, progress_bar=False)
  config.checkpoint.every = 2
  config.demo.max_new_tokens = 4
  out = demo.run(config)

  unsafe = config.demo.unsafe_prompts.split("|")
  safe = config.demo.safe_prompts.split("|")
  assert out["prompts"] == unsafe + safe
  assert out["kinds"] == ["unsafe"] * len(unsafe) + ["safe"] * len(safe)
  assert len(out["before"]) == len(out["after"]) == len(out["prompts"])
  printed = capsys.readouterr().out
  assert all(prompt in printed for prompt in out["prompts"])
  assert printed.count(" before [") == printed.count("  after [") == len(out["prompts"])
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["train"]["final_step"] == 2

  # "before" is the untouched random model and "after" the trained adapters merged into it:
  # regenerate both independently and compare.
  cfg, base, tokenizer = load_model(config.model)
  template = get_template(config.data.template)
  sample = lambda params: Sampler(cfg, params, tokenizer, template=template)(
      out["prompts"], config.demo.max_new_tokens).text
  assert sample(base) == out["before"]
  lcfg = common.lora_config(config.lora)
  merged = jax.jit(lambda p: lora_lib.decoder_params(p, lcfg))(out["sft"]["state"].params)
  assert sample(merged) == out["after"]
  assert not all(np.allclose(a, b) for a, b in
                 zip(jax.tree.leaves(merged), jax.tree.leaves(base)))
