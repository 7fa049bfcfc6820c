"""Evaluate a prompt template: refusal (and harmfulness) with and without it.

  python -m alignment.main --config=configs/template_eval.py                 # 270M, all sets
  python -m alignment.main --config=configs/template_eval.py:quick           # CPU smoke run
  python -m alignment.main --config=configs/template_eval.py \\
      --config.template=safety_few_shot --config.sets=xstest

`template` and `baseline` name templates of `template_file` (configs/prompt_templates/
safety.json by default), or none / gemma_chat / alpaca / plain. The templates there were
written from the training data, so the default sets are the paper's evaluation sets and XSTest.

Presets:
  default  the paper's seven sets + XSTest v2, 128 new tokens, greedy.
  quick    3 prompts each of malicious_instructions (unsafe) and physical_safety_safe (safe),
           24 new tokens: a smoke run of the 270M on a CPU.
  tiny     random tiny model (built-in tiny tokenizer), 2 prompts of the same two sets.
"""

from __future__ import annotations

import pathlib

import ml_collections

from alignment.data.sources import PAPER_EVAL_SOURCES
from alignment.jobs import sections

LIBRARY = str(pathlib.Path(__file__).resolve().parent / "prompt_templates" / "safety.json")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "template_eval"
  c.workdir = "runs/template_eval"
  c.data_dir = ""  # '' -> $ALIGNMENT_DATA_DIR
  c.seed = 0
  c.model = sections.model()
  c.adapters = ""  # LoRA adapters .npz on top of `model`
  c.run_dir = ""  # or an SFT run directory (its model and adapters)
  c.template_file = LIBRARY
  c.template = "by_tag"  # the template under test
  c.baseline = "plain_chat"  # what "without it" means: the same turns, nothing added
  c.route_by = "tag"  # dynamic templates: 'tag' (the prompt's tags) | 'label' (oracle)
  c.sets = (*PAPER_EVAL_SOURCES, "xstest")  # names and/or files, as evaluate's
  c.columns = ""  # a file's column renames, e.g. "goal:prompt" (configs/evaluate.py)
  c.max_prompts_per_set = 0  # 0 = all
  c.max_new_tokens = 128
  c.batch_size = 16
  c.temperature = 0.0
  c.top_k = 0
  c.top_p = 1.0
  c.scoring = ml_collections.ConfigDict(dict(
      harmfulness_rm="", harmfulness_kind="probability", helpfulness_rm="", batch_size=8))
  if preset is None:
    pass
  elif preset in ("quick", "tiny"):
    c.sets = ("malicious_instructions", "physical_safety_safe")
    c.workdir = f"runs/template_eval_{preset}"
    c.max_prompts_per_set = 3 if preset == "quick" else 2
    c.max_new_tokens = 24 if preset == "quick" else 4
    c.batch_size = 8
    if preset == "tiny":
      c.model = sections.model(checkpoint="random", preset="tiny_gemma3")
      c.model.tokenizer = "tiny"  # the built-in 600-piece SentencePiece model
  else:
    raise ValueError(f"unknown template_eval preset {preset!r}; known: quick, tiny (or none)")
  return c
