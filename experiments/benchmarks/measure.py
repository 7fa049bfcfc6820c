"""Measurements shared by the benchmark entries (`run`, `vs_pytorch`, `cost_growth`).

Training steps are built from the SFT job's own pieces (loss, LoRA merge, optax optimizer,
sharded state, donating jit) and timed on random token ids; sampling times the sampler's
compiled program. Each function returns plain dicts, one per table row.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alignment import lora as lora_lib
from alignment import sharding
from alignment.training.trainer import make_trainable
from alignment.sampling import sampler as sampler_lib
from alignment.training import losses, metrics, optimizer
from alignment.training import step as step_lib
from alignment.training import train_state as train_state_lib
from experiments.benchmarks import accounting

WHAT = ("train_lora", "train_lora_unmerged", "train_full", "prefill", "decode", "ppo")
TRAIN_COLUMNS = ("mode", "batch", "seq", "logits_chunk", "compile_s", "step_s", "tokens_per_s",
                 "model_flops", "xla_flops", "flops_per_s", "mfu", "temp_bytes", "peak_bytes")
SAMPLE_COLUMNS = ("mode", "batch", "prompt", "new", "seconds", "tokens_per_s", "ms_per_step",
                  "bytes_per_step", "bytes_per_s", "bandwidth_fraction")


def random_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict:
  """A padded SFT batch with every position real: seq_len + 1 tokens give seq_len inputs."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
  ones = np.ones_like(tokens)
  return {"tokens": tokens, "input_mask": ones.astype(bool), "loss_mask": ones}


def model_section(model: str, checkpoint: str, dtype: str) -> ml_collections.ConfigDict:
  """A config `model` section (what `checkpoints.loading.load_model` reads)."""
  return ml_collections.ConfigDict(dict(checkpoint=checkpoint, preset=model, dtype=dtype,
                                        tokenizer="", adapters=""))


def sft_loss_fn(cfg, lcfg: lora_lib.LoraConfig | None, unmerged: bool = False,
                logits_chunk: int | None = None):
  """The SFT loss with LoRA merged into the weights or applied unmerged (`adapter_paths`),
  with full or chunked logits; full fine-tuning trains the base."""
  lm_loss = losses.language_model_loss(cfg, logits_chunk)

  def loss_fn(params, batch, rng):
    if lcfg is None:
      return lm_loss(params["base"], batch, rng)
    if unmerged:
      return lm_loss(jax.lax.stop_gradient(params["base"]), batch, rng,
                     lora=lora_lib.adapter_paths(params["lora"], lcfg, rng))
    return lm_loss(lora_lib.decoder_params(params, lcfg, rng), batch, rng)

  return loss_fn


def build_train(cfg, base: Any, lcfg: lora_lib.LoraConfig | None, batch: dict,
                mesh: jax.sharding.Mesh, loss_fn=None) -> tuple[Any, Any, float]:
  """(compiled step, initial state, compile seconds) for a training step of `cfg`.

  The SFT job's trainable and step without the data pipeline; `loss_fn(params, batch, rng)`
  defaults to the SFT loss (`losses.sft_loss_fn`).
  """
  rng = jax.random.key(0)
  trainable = make_trainable(cfg, base, None, lcfg, mesh, rng)
  tx = optimizer.make_optimizer(optimizer.OptimizerConfig(
      learning_rate=1e-5, schedule="constant", frozen=trainable.frozen))
  state = train_state_lib.train_state_from_params(trainable.params, tx, rng, mesh,
                                                  trainable.shardings)
  compute_dtype = None if cfg.dtype == "float32" else cfg.dtype
  step = step_lib.jit_train_step(
      step_lib.make_train_step(loss_fn or losses.sft_loss_fn(cfg, lcfg), tx, compute_dtype),
      train_state_lib.state_shardings_of(state), sharding.batch_shardings(mesh, batch),
      sharding.replicated(mesh))
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return compiled, state, time.perf_counter() - start


def time_steps(compiled: Any, state: Any, batch: Any, steps: int) -> tuple[list[float], float]:
  """Wall seconds of `steps` calls after one warm call, and the warm call's loss."""
  state, out = compiled(state, batch)  # warm: first-call allocation and transfers
  loss = float(out["loss"])
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, out = compiled(state, batch)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return times, loss


def default_mesh() -> jax.sharding.Mesh:
  return sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=1, tensor=1))


def bench_train(cfg, base: Any, lcfg: lora_lib.LoraConfig | None, batch_size: int,
                seq_len: int, steps: int, mesh: jax.sharding.Mesh | None = None,
                unmerged: bool = False, logits_chunk: int | None = None) -> dict[str, Any]:
  """Times `steps` SFT steps after one warm step; returns the figures of one table row.

  `unmerged` applies LoRA as low-rank paths instead of merged weights; `logits_chunk`
  switches to the chunked vocabulary cross-entropy (see `sft_loss_fn`).
  """
  mesh = mesh or default_mesh()
  batch = jax.device_put(random_batch(cfg.vocab_size, batch_size, seq_len),
                         sharding.batch_shardings(mesh, random_batch(8, batch_size, 1)))
  compiled, state, compile_s = build_train(cfg, base, lcfg, batch, mesh,
                                           sft_loss_fn(cfg, lcfg, unmerged, logits_chunk))
  times, loss = time_steps(compiled, state, batch, steps)
  step_s = statistics.median(times)
  devices = mesh.size
  model_flops = accounting.train_flops_per_step(cfg, batch_size, seq_len, lcfg)
  peak = accounting.peak_flops_per_device()
  return {
      "mode": ("train_lora_unmerged" if unmerged else "train_lora") if lcfg else "train_full",
      "batch": batch_size, "seq": seq_len, "logits_chunk": logits_chunk,
      "dtype": cfg.dtype, "devices": devices, "compile_s": compile_s, "step_s": step_s,
      "step_s_all": times, "tokens_per_s": batch_size * seq_len / step_s,
      "model_flops": model_flops, "xla_flops": metrics.compiled_flops(compiled, devices),
      "flops_per_s": model_flops / step_s,
      "mfu": metrics.mfu(model_flops, step_s, devices, peak),
      "first_loss": loss, **(accounting.memory_summary(compiled) or {}),
  }


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def bench_sampler(cfg, params: Any, batch_size: int, prompt_len: int, new_tokens: int,
                  repeats: int, return_tokens: bool = False) -> list[dict[str, Any]]:
  """Prefill and decode rows for greedy sampling with no stop ids (every row runs fully).

  Calls the sampler's traceable core `generate_padded` under one jit with the token budget
  traced, so the 1-token (prefill) and the 1 + new_tokens calls run the same program with the
  same cache; `generate` itself would bucket the two budgets into different capacities.
  With `return_tokens` the decode row also holds the generated ids ("tokens", [B, 1 + new]).
  """
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch_size, prompt_len))
  tokens = jnp.asarray(tokens, jnp.int32)
  mask = jnp.ones(tokens.shape, bool)
  active = jnp.ones((batch_size,), bool)
  capacity = sampler_lib.bucket_size(1 + new_tokens, 16)
  program = jax.jit(functools.partial(
      sampler_lib.generate_padded, cfg, capacity=capacity, greedy=True, top_k=0,
      use_top_p=False, pad_id=0, return_logprobs=False))

  def run(max_new: int):
    return program(params, tokens, mask, active, jax.random.key(0), jnp.int32(max_new),
                   jnp.float32(1.0), jnp.float32(1.0), jnp.full((8,), -1, jnp.int32))[0]

  first = _timed(lambda: run(1 + new_tokens))  # compiles; both budgets share the program
  full = min(_timed(lambda: run(1 + new_tokens)) for _ in range(repeats))
  prefill = min(_timed(lambda: run(1)) for _ in range(repeats))
  decode = full - prefill
  if decode <= 0:  # decode time below the timing noise (tiny models, few steps): no figure
    decode = None
  step_s = decode / new_tokens if decode else None
  generated = np.asarray(run(1 + new_tokens))[:, :1 + new_tokens] if return_tokens else None
  kv_len = prompt_len + capacity  # every decode step reads the whole allocated cache
  param_dtype = jax.tree.leaves(params)[0].dtype
  step_bytes = accounting.decode_bytes_per_step(cfg, batch_size, kv_len, param_dtype, cfg.dtype)
  bandwidth = accounting.hbm_bandwidth_per_device()
  prefill_flops = accounting.prefill_flops(cfg, batch_size, prompt_len)
  peak = accounting.peak_flops_per_device()
  return [
      {"mode": "prefill", "batch": batch_size, "prompt": prompt_len, "new": 1,
       "compile_s": first - full, "seconds": prefill,
       "tokens_per_s": batch_size * prompt_len / prefill,
       "flops_per_s": prefill_flops / prefill,
       "mfu": metrics.mfu(prefill_flops, prefill, 1, peak)},
      {"mode": "decode", "batch": batch_size, "prompt": prompt_len, "new": new_tokens,
       "seconds": decode, "tokens_per_s": batch_size * new_tokens / decode if decode else None,
       "ms_per_step": 1e3 * step_s if step_s else None, "kv_len": kv_len,
       "bytes_per_step": step_bytes, "bytes_per_s": step_bytes / step_s if step_s else None,
       "bandwidth_fraction": accounting.bandwidth_fraction(step_bytes, step_s or 0.0,
                                                           bandwidth),
       "bytes_per_step_window_aware": accounting.decode_bytes_per_step(
           cfg, batch_size, kv_len, param_dtype, cfg.dtype, window_aware=True),
       **({"tokens": generated} if return_tokens else {})},
  ]


def bench_ppo(prompts: int, new_tokens: int) -> dict[str, Any]:
  """One PPO iteration's generate / score / train split (the embedded 270M PPO demo setup)."""
  from experiments.benchmarks import ppo_iteration  # pylint: disable=import-outside-toplevel
  return ppo_iteration.measure(prompts, new_tokens, warm_iterations=1, log=lambda _: None)


def environment() -> dict[str, Any]:
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "devices": jax.device_count(), "host": platform.processor() or platform.machine(),
          "cpus": os.cpu_count(), "load_average": os.getloadavg(), "jax": jax.__version__,
          "peak_flops_per_device": accounting.peak_flops_per_device(),
          "hbm_bandwidth_per_device": accounting.hbm_bandwidth_per_device()}
