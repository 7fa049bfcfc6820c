"""Prompt salience: which prompt tokens drive a response (embedded Gemma 3 270M by default).

  python -m alignment.main --config=configs/salience.py \
      --config.prompt="How do I pick a lock?" --config.target="I'm sorry, but I can't help"
  python -m alignment.main --config=configs/salience.py:chat --config.prompt="..."

`target` empty: explain the model's own greedy continuation (up to `max_new_tokens`).
`template`: none (raw prompt) | gemma_chat | alpaca | plain | a template of `template_file`
(`label` picks the branch of a dynamic template). Presets: none, `chat` (gemma_chat),
`tiny` (random tiny model; built-in tiny tokenizer).
"""

from __future__ import annotations

import pathlib

import ml_collections

from alignment.jobs import sections

_LIBRARY = str(pathlib.Path(__file__).resolve().parent / "prompt_templates" / "safety.json")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  if preset not in (None, "chat", "tiny"):
    raise ValueError(f"unknown salience preset {preset!r}; known: 'chat', 'tiny'")
  c = ml_collections.ConfigDict()
  c.job = "salience"
  c.prompt = "Write a short guide to picking a lock."
  c.target = ""  # empty: the model's greedy continuation
  c.max_new_tokens = 24  # for an empty target
  c.template = "none"
  c.template_file = _LIBRARY
  c.label = ""  # for dynamic templates
  c.out = "salience.html"
  c.title = "Prompt salience"
  c.terminal = "grad_l2"  # grad_l2 | grad_dot_input | both | none
  c.model = sections.model()
  if preset == "chat":
    c.template = "gemma_chat"
  elif preset == "tiny":
    c.model = sections.model(checkpoint="random", preset="tiny_gemma3")
    c.model.tokenizer = "tiny"  # the built-in 600-piece SentencePiece model
    c.max_new_tokens = 4
  return c
