"""The README's main job (`make run`: configs/demo.py, the sft job with `eval.before_after`)
end to end on a tiny random model."""

import json

import jax
import numpy as np

from alignment import lora as lora_lib
from alignment.checkpoints.loading import load_model
from alignment.jobs import common, sft
from alignment.prompts import get_template
from alignment.sampling import Sampler
from alignment.training import sft_evaluation
from configs import demo as demo_config
from tiny_sentencepiece import train_tiny_tokenizer


def test_demo_answers_before_and_after_its_sft_run(tmp_path, data_dir, capsys):
  train_tiny_tokenizer(tmp_path)
  config = demo_config.get_config()
  assert config.job == "sft"
  config.workdir = str(tmp_path / "run")
  config.model.update(checkpoint="random", preset="tiny_gemma3",
                      tokenizer=str(tmp_path / "tiny_sp.model"))
  config.data.update(num_base=16, num_safety=16, max_length=128)
  config.train.update(steps=2, log_every=1, progress_bar=False)
  config.checkpoint.every = 2
  config.eval.max_new_tokens = 4
  out = sft.run(config)

  prompts = list(demo_config.UNSAFE_PROMPTS + demo_config.SAFE_PROMPTS)
  assert [r["step"] for r in out["history"]] == [0, 2]
  rows = sft_evaluation.before_after(out["history"])
  assert [r[0] for r in rows] == prompts
  printed = capsys.readouterr().out
  assert all(prompt in printed for prompt in prompts)
  assert printed.count(" before [") == printed.count("  after [") == len(prompts)
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["train"]["final_step"] == 2
  assert result["evaluations"] == out["history"]

  # "before" is the untouched random model and "after" the trained adapters merged into it:
  # regenerate both independently and compare.
  cfg, base, tokenizer = load_model(config.model)
  template = get_template(config.data.template)
  sample = lambda params: Sampler(cfg, params, tokenizer, template=template)(
      prompts, config.eval.max_new_tokens).text
  assert sample(base) == [before for _, before, _ in rows]
  lcfg = common.lora_config(config.lora)
  merged = jax.jit(lambda p: lora_lib.decoder_params(p, lcfg))(out["state"].params)
  assert sample(merged) == [after for _, _, after in rows]
  assert not all(np.allclose(a, b) for a, b in
                 zip(jax.tree.leaves(merged), jax.tree.leaves(base)))

  # A rerun of the finished run resumes at step 2 and still prints the comparison: "before"
  # is the starting model, evaluated before the loop restores the checkpoint.
  again = sft.run(config)
  assert sft_evaluation.before_after(again["history"]) == rows
  assert capsys.readouterr().out.count(" before [") == len(prompts)


def test_before_after_needs_a_step_zero_and_a_later_record():
  history = [{"step": 0, "samples": {"p": "a"}}, {"step": 4, "eval_loss": 1.0},
             {"step": 8, "samples": {"p": "b"}}]
  assert sft_evaluation.before_after(history) == [("p", "a", "b")]
  assert sft_evaluation.before_after(history[1:]) == []
  assert sft_evaluation.before_after(history[:1]) == []
  table = sft_evaluation.format_before_after([("p", "I cannot help with that.", "Sure.")], "t")
  assert " before [" in table and "  after [" in table and "\nt\n" in table
