"""Job `demo`: answers before and after a short safety SFT, side by side.

Runs on a laptop CPU in minutes: it is the project's smoke test of the whole path (weights,
tokenizer, data mixture, LoRA training, checkpoints, sampling, refusal detection).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from alignment import lora as lora_lib
from alignment.checkpoints.loading import load_model
from alignment.judges.refusal import classify_refusal
from alignment.jobs import common, sft
from alignment.prompts import get_template
from alignment.sampling import Sampler


def _answers(cfg, params, tokenizer, template, prompts, max_new_tokens) -> list[str]:
  return Sampler(cfg, params, tokenizer, template=template)(prompts, max_new_tokens).text


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Prints and returns {"prompts", "kinds", "before", "after", "sft"} (answers per prompt)."""
  d = config.demo
  groups = {"unsafe": [p for p in d.unsafe_prompts.split("|") if p.strip()],
            "safe": [p for p in d.safe_prompts.split("|") if p.strip()]}
  prompts = groups["unsafe"] + groups["safe"]
  template = get_template(config.data.template)
  cfg, base, tokenizer = load_model(config.model)
  before = _answers(cfg, base, tokenizer, template, prompts, d.max_new_tokens)
  del base
  out = sft.run(config)
  merged = jax.jit(lambda p: lora_lib.decoder_params(p, common.lora_config(config.lora)))(
      out["state"].params)
  after = _answers(cfg, merged, tokenizer, template, prompts, d.max_new_tokens)

  width = 100
  print("\n" + "=" * width)
  print(f"Before and after {config.train.steps} LoRA steps on {config.data.num_base} Alpaca + "
        f"{config.data.num_safety} safety examples (greedy decoding, refusal by string match)")
  for kind, group in groups.items():
    for prompt in group:
      i = prompts.index(prompt)
      print("-" * width)
      print(f"[{kind} prompt] {prompt}")
      for label, answer in (("before", before[i]), ("after", after[i])):
        verdict = classify_refusal(answer).label
        text = " ".join(answer.split())[:300] or "(empty)"
        print(f"  {label:>6} [{verdict}]: {text}")
  print("=" * width)
  print(f"run directory: {config.workdir}")
  kinds = ["unsafe"] * len(groups["unsafe"]) + ["safe"] * len(groups["safe"])
  return {"prompts": prompts, "kinds": kinds, "before": before, "after": after, "sft": out}
