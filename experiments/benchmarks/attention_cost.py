"""Compiled FLOPs and memory of the SFT step and the sampler, per attention/cache/loss choice.

  python -m experiments.benchmarks.attention_cost [--preset=gemma3_270m] [--batch_size=2]
      [--seq_len=512] [--response_fraction=0.25] [--prompt_len=256] [--new_tokens=2048]
      [--output=attention_cost.json]

Nothing is run: each program is lowered on abstract (random-shaped) parameters and compiled,
and XLA's `cost_analysis()` FLOPs and `memory_analysis()` bytes are reported. Training rows:
d loss / d params of the next-token loss with a response-only mask (the last
`response_fraction` of each row carries loss), for the explicit vs fused attention and for
full logits vs logits only at the loss positions. Sampler rows: the whole `generate_padded`
program with the full-length vs the window-sized ring cache of local layers.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

from alignment import model as M
from alignment.sampling import sampler as S
from alignment.training import losses

_PRESET = flags.DEFINE_string("preset", "gemma3_270m", "Model preset (random weights).")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Training sequences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 512, "Training tokens per sequence.")
_RESPONSE = flags.DEFINE_float("response_fraction", 0.25, "Share of each row with loss.")
_PROMPT = flags.DEFINE_integer("prompt_len", 256, "Sampler prompt length.")
_NEW = flags.DEFINE_integer("new_tokens", 2048, "Sampler token budget (cache capacity).")
_WHAT = flags.DEFINE_list("what", ["train", "sample"], "Which programs.")
_OUTPUT = flags.DEFINE_string("output", "", "Write the rows here as JSON.")


def analyse(lowered) -> dict[str, Any]:
  start = time.perf_counter()
  compiled = lowered.compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  return {"gflops": round(cost["flops"] / 1e9, 2),
          "temp_mb": round(memory.temp_size_in_bytes / 1e6, 1),
          "argument_mb": round(memory.argument_size_in_bytes / 1e6, 1),
          "compile_s": round(time.perf_counter() - start, 1)}


def train_rows(cfg: M.ModelConfig, params: Any) -> list[dict[str, Any]]:
  batch, length = _BATCH.value, _SEQ.value
  response = int(length * _RESPONSE.value)
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  loss_mask = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  # Targets are positions 1..L-1, so at most batch * response of them carry loss.
  rows = []
  for impl in ("explicit", "auto"):
    for loss_positions in (0, batch * response):
      lm_loss = losses.language_model_loss(cfg.replace(attention_impl=impl),
                                           loss_positions=loss_positions or None)
      grad = jax.jit(jax.grad(lambda p, t, m: lm_loss(
          p, {"tokens": t, "loss_mask": m}, None)[0]))
      row = {"program": "sft_grad", "attention_impl": impl, "loss_positions": loss_positions,
             **analyse(grad.lower(params, tokens, loss_mask))}
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


def sample_rows(cfg: M.ModelConfig, params: Any) -> list[dict[str, Any]]:
  rows = []
  capacity = _NEW.value
  for ring in (False, True):
    fn = jax.jit(S.generate_padded, static_argnames=(
        "cfg", "capacity", "greedy", "top_k", "use_top_p", "pad_id", "return_logprobs",
        "ring_local"))
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
    lowered = fn.lower(
        cfg, params, spec((1, _PROMPT.value), jnp.int32), spec((1, _PROMPT.value), bool),
        spec((1,), bool), jax.random.key(0), spec((), jnp.int32), spec((), jnp.float32),
        spec((), jnp.float32), spec((8,), jnp.int32), capacity=capacity, greedy=True,
        top_k=0, use_top_p=False, pad_id=0, return_logprobs=False, ring_local=ring)
    row = {"program": "generate", "ring_local": ring, "prompt_len": _PROMPT.value,
           "capacity": capacity, **analyse(lowered)}
    cache = jax.eval_shape(lambda: M.init_cache(cfg, 1, _PROMPT.value + capacity,
                                                ring_local=ring))
    row["kv_cache_mb"] = round(sum(x.size * x.dtype.itemsize
                                   for x in jax.tree.leaves(cache)) / 1e6, 1)
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def main(argv: list[str]) -> None:
  del argv
  cfg = M.get_config(_PRESET.value)
  print(f"{_PRESET.value}: {cfg.num_params():,} params (random, abstract); backend "
        f"{jax.default_backend()}, {os.cpu_count()} cpus, load average "
        f"{os.getloadavg()[0]:.1f}", flush=True)
  params = M.param_shapes(cfg)
  rows = []
  if "train" in _WHAT.value:
    rows += train_rows(cfg, params)
  if "sample" in _WHAT.value:
    rows += sample_rows(cfg, params)
  print(f"load average at the end {os.getloadavg()[0]:.1f}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"config": str(cfg), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
