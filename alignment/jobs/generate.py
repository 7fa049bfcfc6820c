"""Job `generate`: print the model's continuation of `config.prompt`."""

from __future__ import annotations

import time

import jax
import ml_collections
from absl import logging

from alignment.checkpoints.loading import load_model
from alignment.prompts.templates import PromptTemplate, get_template
from alignment.sampling import Sampler, SamplingParams


def _template(name: str) -> PromptTemplate | None:
  if name == "none":
    return None
  try:
    return get_template(name)
  except KeyError as e:
    raise ValueError(f"config.template: {e.args[0]} (or 'none')") from None


def run(config: ml_collections.ConfigDict) -> None:
  # Validate the cheap fields before the slow load.
  try:
    sampling = SamplingParams(temperature=config.temperature, top_k=config.top_k,
                              top_p=config.top_p)
  except ValueError as e:
    raise ValueError(f"config: {e}") from None
  template = _template(config.template)
  start = time.perf_counter()
  cfg, params, tokenizer = load_model(config.model)
  if tokenizer is None:
    raise ValueError(f"config.model: checkpoint {config.model.checkpoint!r} comes without a "
                     "tokenizer; set config.model.tokenizer to a SentencePiece .model file")
  logging.info("loaded %s in %.1f s", config.model.checkpoint, time.perf_counter() - start)
  sampler = Sampler(cfg, params, tokenizer, template=template)
  start = time.perf_counter()
  out = sampler([config.prompt], config.max_new_tokens, sampling,
                rng=jax.random.key(config.seed))
  logging.info("generated %d tokens in %.1f s (compilation included)", int(out.lengths[0]),
               time.perf_counter() - start)
  print(sampler.format(config.prompt) + out.text[0])
