"""Generate a continuation of one prompt (by default with the embedded Gemma 3 270M).

  python -m alignment.main --config=configs/generate.py --config.prompt="The capital of France"
  python -m alignment.main --config=configs/generate.py:sample --config.template=alpaca

Presets: none (greedy), `sample` (temperature 1, top-k 64, top-p 0.95: Gemma's recommended
sampling settings), `chat` (`sample` through the Gemma chat template).
"""

from __future__ import annotations

import ml_collections

from alignment.jobs import sections

_PRESETS = {
    None: {},
    "sample": {"temperature": 1.0, "top_k": 64, "top_p": 0.95},
    "chat": {"temperature": 1.0, "top_k": 64, "top_p": 0.95, "template": "gemma_chat"},
}


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  if preset not in _PRESETS:
    known = ", ".join(repr(p) for p in _PRESETS if p)
    raise ValueError(f"unknown generate preset {preset!r}; known: {known}")
  c = ml_collections.ConfigDict()
  c.job = "generate"
  c.prompt = "The three most important safety rules in a chemistry lab are"
  c.template = "none"  # 'none' | 'alpaca' | 'gemma_chat' (the prompt is the instruction)
  c.max_new_tokens = 64
  c.temperature = 0.0  # 0: greedy
  c.top_k = 0  # 0: off
  c.top_p = 1.0  # 1: off
  c.seed = 0
  c.model = sections.model()  # checkpoint='embedded', preset='gemma3_270m', dtype='float32'
  c.update(_PRESETS[preset])
  return c
