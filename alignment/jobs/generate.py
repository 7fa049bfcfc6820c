"""Job `generate`: print the model's continuation of `config.prompt`."""

from __future__ import annotations

import time

import jax
import ml_collections
from absl import logging

from alignment.checkpoints.loading import load_model, require_tokenizer
from alignment.prompts import template_or_none
from alignment.sampling import Sampler, sample_config


def run(config: ml_collections.ConfigDict) -> None:
  # Validate the cheap fields before the slow load.
  sampling = sample_config.sampling_params(config)
  template = template_or_none(config.template)
  start = time.perf_counter()
  cfg, params, tokenizer = load_model(config.model)
  require_tokenizer(tokenizer, config.model)
  logging.info("loaded %s in %.1f s", config.model.checkpoint, time.perf_counter() - start)
  sampler = Sampler(cfg, params, tokenizer, template=template)
  start = time.perf_counter()
  out = sampler([config.prompt], config.max_new_tokens, sampling,
                rng=jax.random.key(config.seed))
  logging.info("generated %d tokens in %.1f s (compilation included)", int(out.lengths[0]),
               time.perf_counter() - start)
  print(sampler.format(config.prompt) + out.text[0])
