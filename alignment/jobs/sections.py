"""Config sections shared by the job configs in `configs/`, so each config file stays short.

Each function returns a fresh `ml_collections.ConfigDict`; a config file assembles the ones
its job needs and sets its own defaults on top. Sections that a library dataclass reads are
written from it (`schema.section`), so their keys and defaults are the dataclass's.
"""

from __future__ import annotations

import ml_collections

from alignment import lora as lora_lib
from alignment import schema, sharding
from alignment.sampling import SamplingParams
from alignment.training.distributed import DistributedConfig

# `config.resume`: 'same_run' refuses to resume a workdir whose saved config or data differ;
# 'continue_with_changes' resumes and records the changes (alignment/training/run_identity.py).
RESUME = "same_run"


def model(checkpoint: str = "embedded", preset: str = "gemma3_270m",
          dtype: str = "float32") -> ml_collections.ConfigDict:
  """Which weights: 'embedded' | 'random' | a path (see alignment.checkpoints.loading)."""
  return ml_collections.ConfigDict(dict(
      checkpoint=checkpoint, preset=preset,
      dtype=dtype,  # compute dtype of activations; master weights stay float32
      tokenizer="",  # a SentencePiece .model overriding the checkpoint's own
      adapters=""))  # a LoRA adapters.npz merged in at load (start from an SFT run)


def lora(enabled: bool = True, rank: int = 8, alpha: float = 16.0,
         dropout: float = 0.0) -> ml_collections.ConfigDict:
  """`LoraConfig`'s fields (`--config.lora.targets=q,v` works) and `enabled`."""
  return schema.section(lora_lib.LoraConfig, dict(enabled=enabled), rank=rank, alpha=alpha,
                        dropout=dropout)


def train(steps: int = 1000, batch_size: int = 16, learning_rate: float = 2e-4,
          warmup_steps: int = 50) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      steps=steps, batch_size=batch_size, learning_rate=learning_rate,
      warmup_steps=warmup_steps, schedule="cosine", weight_decay=0.0, max_grad_norm=1.0,
      grad_accum_steps=1, log_every=10, progress_bar=True))


def sampling(temperature: float) -> ml_collections.ConfigDict:
  """How a job that trains on its own samples (rejection sampling, distillation) draws them:
  `SamplingParams`' fields, and how many tokens and prompts at a time."""
  return schema.section(SamplingParams, dict(max_new_tokens=128, batch_size=16),
                        temperature=temperature, top_p=0.95)


def prompt_data(prompt_source: tuple[str, ...]) -> ml_collections.ConfigDict:
  """Prompts to sample from (source names or files; `a,b` on a command line) and how the
  samples become SFT rows."""
  return ml_collections.ConfigDict(dict(
      prompt_source=prompt_source, num_prompts=512,
      per_source=0,  # at most this many from each source (a seeded subset; 0 = all)
      template="alpaca", max_length=384, packing=True))


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Parallelism degrees over all devices of all hosts; one may be -1 (the rest)."""
  return schema.section(sharding.MeshConfig, data=data, fsdp=fsdp, tensor=tensor)


def checkpoint(every: int = 200, keep: int = 2) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(every=every, keep=keep, async_save=True))


def distributed() -> ml_collections.ConfigDict:
  """Multi-host (`DistributedConfig`): on Cloud TPU only `initialize=True` is needed."""
  return schema.section(DistributedConfig)
