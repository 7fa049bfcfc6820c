"""Config sections shared by the job configs in `configs/`, so each config file stays short.

Each function returns a fresh `ml_collections.ConfigDict`; a config file assembles the ones
its job needs and sets its own defaults on top.
"""

from __future__ import annotations

import ml_collections

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
  return ml_collections.ConfigDict(dict(
      enabled=enabled, rank=rank, alpha=alpha, dropout=dropout,
      targets=("q", "k", "v", "o", "gate", "up", "down")))  # `--config.lora.targets=q,v` works


def train(steps: int = 1000, batch_size: int = 16, learning_rate: float = 2e-4,
          warmup_steps: int = 50) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      steps=steps, batch_size=batch_size, learning_rate=learning_rate,
      warmup_steps=warmup_steps, schedule="cosine", weight_decay=0.0, max_grad_norm=1.0,
      grad_accum_steps=1, log_every=10, progress_bar=True))


def sampling(temperature: float) -> ml_collections.ConfigDict:
  """How a job that trains on its own samples (rejection sampling, distillation) draws them."""
  return ml_collections.ConfigDict(dict(
      temperature=temperature, top_k=0, top_p=0.95, max_new_tokens=128, batch_size=16))


def prompt_data(prompt_source: tuple[str, ...]) -> ml_collections.ConfigDict:
  """Prompts to sample from (source names or files; `a,b` on a command line) and how the
  samples become SFT rows."""
  return ml_collections.ConfigDict(dict(
      prompt_source=prompt_source, num_prompts=512,
      per_source=0,  # at most this many from each source (a seeded subset; 0 = all)
      template="alpaca", max_length=384, packing=True))


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Parallelism degrees over all devices of all hosts; one may be -1 (the rest)."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def checkpoint(every: int = 200, keep: int = 2) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(every=every, keep=keep, async_save=True))


def distributed() -> ml_collections.ConfigDict:
  """Multi-host: on Cloud TPU only `initialize=True` is needed."""
  return ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address="", num_processes=0, process_id=-1))
