"""Job `salience`: which prompt tokens drive a response (gradient norm, gradient x input).

Writes `config.out` (a self-contained HTML page) and prints the terminal view. With an empty
`config.target` the target is the model's own greedy continuation of the prompt.
"""

from __future__ import annotations

import pathlib
import time

import ml_collections
from absl import logging

from alignment.checkpoints.loading import load_model, require_tokenizer
from alignment.interpret import render
from alignment.interpret.salience import SalienceResult, prompt_salience
from alignment.prompts.library import resolve_template
from alignment.sampling import Sampler, SamplingParams
from alignment.files import atomic


def run(config: ml_collections.ConfigDict) -> SalienceResult:
  if not config.prompt:
    raise ValueError("config.prompt: give the prompt to explain")
  methods = list(render.METHODS) if config.terminal == "both" else [config.terminal]
  unknown = [m for m in methods if m not in (*render.METHODS, "none")]
  if unknown:
    raise ValueError(f"config.terminal: {unknown[0]!r} is not one of "
                     f"{', '.join(render.METHODS)}, both, none")
  try:
    template = resolve_template(config.template, config.template_file)
  except KeyError as e:
    raise ValueError(f"config.template: {e.args[0]}") from None
  text = config.prompt if template is None else template.prompt(config.prompt,
                                                                 label=config.label or None)
  start = time.perf_counter()
  cfg, params, tokenizer = load_model(config.model)
  require_tokenizer(tokenizer, config.model)
  logging.info("loaded %s in %.1f s", config.model.checkpoint, time.perf_counter() - start)
  target = config.target
  if not target:
    out = Sampler(cfg, params, tokenizer)([text], config.max_new_tokens, SamplingParams())
    target = out.text[0]
    logging.info("target (greedy continuation): %r", target)
    if not target:
      raise ValueError("the model's continuation is empty; pass config.target")
  start = time.perf_counter()
  result = prompt_salience(cfg, params, tokenizer, text, target)
  logging.info("salience of %d tokens in %.1f s (compilation included)", len(result.pieces),
               time.perf_counter() - start)
  path = pathlib.Path(config.out)
  atomic.write_text(path, render.to_html(result, title=config.title))
  for method in methods:
    if method != "none":
      print(render.to_terminal(result, method))
  print(f"wrote {path}")
  return result
