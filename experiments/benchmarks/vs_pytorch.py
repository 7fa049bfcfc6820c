"""This codebase against the PyTorch stack (transformers + peft) on the same machine and shapes.

  python -m experiments.benchmarks.vs_pytorch --model=gemma3_270m --batch_size=2 --seq_len=128 \
      [--new_tokens=32] [--steps=3] [--lora_rank=8] [--dtype=float32] [--output=vs_pytorch.json]

Both sides get the same random weights (initialised here, exported with `save_safetensors`,
loaded by `transformers`), float32 by default, and the same work. `--dtype=bfloat16`: the
PyTorch model is loaded in bf16 (peft keeps its adapters in float32); the JAX side trains
with float32 master weights and bf16 compute (as the SFT job does) and samples with bf16
weights (as `experiments.benchmarks.run` does).
  lora_sft   one LoRA step (rank r, alpha 2r, no dropout, q,k,v,o,gate,up,down targeted, AdamW,
             clipping at 1.0) on [batch, seq_len] random tokens, loss on every position.
             JAX: the SFT job's step. PyTorch: peft `get_peft_model` + a plain training step
             (forward with labels, backward, clip, AdamW) — trl's SFTTrainer runs this same
             step inside a Trainer loop whose data and logging overhead would only add time.
  generate   greedy, prompt of seq_len random tokens, 1 + new_tokens tokens, no stop token.
             JAX: the sampler's compiled program. PyTorch: `model.generate(do_sample=False)`
             with the default cache. Prefill = a 1-token call; decode = the rest.
  dpo        one LoRA DPO step (sigmoid loss, beta 0.1) on `batch` pairs of [seq_len] tokens,
             the second half of each sequence being the response. JAX: `alignment.rl.dpo`'s
             loss in the shared train step. PyTorch: a hand-written step in the way trl's
             DPOTrainer computes it (reference = peft with adapters disabled, no grad; chosen
             and rejected concatenated into one forward).
Timings: one warm call, then the median of `steps` calls (generation: best of `steps`).
Prints `uptime` before and after: on a shared machine, a load average above the core count
means the figures are pessimistic for both sides.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import app, flags

from alignment import lora as lora_lib
from alignment.checkpoints.huggingface import save_safetensors
from alignment.checkpoints.loading import load_model
from alignment.rl import dpo as dpo_lib
from experiments.benchmarks import accounting
from experiments.benchmarks import measure as bench

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BETA = 0.1


def pair_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 1) -> dict:
  """Preference pairs of [seq_len] tokens sharing the first half (the prompt); the loss mask
  covers the second half (the response)."""
  rng = np.random.default_rng(seed)
  prompt = rng.integers(3, vocab_size, (batch_size, seq_len // 2))
  sides = {}
  for name in ("chosen", "rejected"):
    reply = rng.integers(3, vocab_size, (batch_size, seq_len - seq_len // 2))
    tokens = np.concatenate([prompt, reply], axis=1).astype(np.int32)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, seq_len // 2:] = 1
    sides[name] = {"tokens": tokens, "input_mask": np.ones_like(tokens, bool),
                   "loss_mask": loss_mask}
  return sides


def _median_time(fn: Callable[[], Any], steps: int) -> float:
  fn()  # warm
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# ------------------------------------------------------------------------------------------------
# JAX side.


def jax_side(cfg, params, batch_size: int, seq_len: int, new_tokens: int, rank: int,
             steps: int) -> dict[str, Any]:
  lcfg = lora_lib.LoraConfig(rank=rank, alpha=2.0 * rank, targets=TARGETS)
  out: dict[str, Any] = {}
  row = bench.bench_train(cfg, params, lcfg, batch_size, seq_len, steps)
  out["lora_sft_step_s"] = row["step_s"]
  out["lora_sft_tokens_per_s"] = batch_size * seq_len / row["step_s"]
  out["lora_sft_compile_s"] = row["compile_s"]
  sample_cfg, sample_params = cfg, params
  if cfg.dtype != "float32":  # sample with weights in the compute dtype
    sample_cfg = cfg.replace(param_dtype=cfg.dtype)
    sample_params = jax.tree.map(lambda x: x.astype(cfg.dtype), params)
  prefill, decode = bench.bench_sampler(sample_cfg, sample_params, batch_size, seq_len,
                                        new_tokens, steps, return_tokens=True)
  out["greedy_tokens"] = decode["tokens"]
  out["prefill_s"], out["decode_s"] = prefill["seconds"], decode["seconds"]
  out["generate_s"] = prefill["seconds"] + (decode["seconds"] or 0.0)
  out["generate_tokens_per_s"] = batch_size * (1 + new_tokens) / out["generate_s"]
  out["decode_tokens_per_s"] = decode["tokens_per_s"]
  mesh = bench.default_mesh()
  pairs = jax.device_put(pair_batch(cfg.vocab_size, batch_size, seq_len))
  loss_fn = dpo_lib.make_loss_fn(cfg, lcfg, dpo_lib.DPOConfig(beta=BETA))
  compiled, state, _ = bench.build_train(cfg, params, lcfg, pairs, mesh, loss_fn)
  times, loss = bench.time_steps(compiled, state, pairs, steps)
  out["dpo_step_s"] = statistics.median(times)
  out["dpo_first_loss"] = loss
  return out


# ------------------------------------------------------------------------------------------------
# PyTorch side.


def torch_side(hf_dir: str, batch_size: int, seq_len: int, new_tokens: int, rank: int,
               steps: int, vocab_size: int, dtype: str = "float32") -> dict[str, Any]:
  import peft  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype))
  model = model.to(device)
  out: dict[str, Any] = {"attn_implementation": model.config._attn_implementation,
                         "torch_threads": torch.get_num_threads(), "torch_device": device}
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  model.eval()  # generation first, on the plain model (the LoRA steps below change it)
  config = copy.deepcopy(model.generation_config)
  config.eos_token_id = None  # no stop token: every row decodes the full budget
  config.min_new_tokens = None
  config.do_sample = False
  config.pad_token_id = 0
  prompt = torch.from_numpy(np.random.default_rng(0).integers(
      3, vocab_size, (batch_size, seq_len)).astype(np.int64)).to(device)

  def gen(n):
    config.max_new_tokens = n
    with torch.no_grad():
      result = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                              generation_config=config)
    sync()
    if result.shape != (batch_size, seq_len + n):
      raise RuntimeError(f"generate returned {tuple(result.shape)}, expected "
                         f"{(batch_size, seq_len + n)}: it stopped early")
    return result

  generated = gen(1 + new_tokens)  # warm; its ids are compared with the JAX side's
  full = min(_timed(lambda: gen(1 + new_tokens)) for _ in range(steps))
  prefill = min(_timed(lambda: gen(1)) for _ in range(steps))
  out["prefill_s"], out["decode_s"] = prefill, full - prefill
  out["generate_s"] = full
  out["generate_tokens_per_s"] = batch_size * (1 + new_tokens) / full
  out["decode_tokens_per_s"] = (batch_size * new_tokens / (full - prefill)
                                if full > prefill else None)  # None: below timing noise
  out["greedy_tokens"] = generated[:, seq_len:].cpu().numpy()
  model = peft.get_peft_model(model, peft.LoraConfig(
      r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=HF_TARGETS,
      task_type="CAUSAL_LM"))
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)
  tokens = torch.from_numpy(bench.random_batch(vocab_size, batch_size, seq_len - 1)["tokens"])
  tokens = tokens.long().to(device)

  def sft_step():
    model.train()
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return loss

  out["lora_sft_step_s"] = _median_time(sft_step, steps)
  out["lora_sft_tokens_per_s"] = batch_size * seq_len / out["lora_sft_step_s"]

  pairs = pair_batch(vocab_size, batch_size, seq_len)
  ids = torch.from_numpy(np.concatenate([pairs["chosen"]["tokens"],
                                         pairs["rejected"]["tokens"]])).long().to(device)
  weights = torch.from_numpy(np.concatenate([pairs["chosen"]["loss_mask"],
                                             pairs["rejected"]["loss_mask"]]))[:, 1:].float()
  weights = weights.to(device)

  def sequence_logps(logits):
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = torch.gather(logp, 2, ids[:, 1:, None])[..., 0]
    return (token_logp * weights).sum(-1)

  def dpo_step():
    model.train()
    with torch.no_grad(), model.disable_adapter():
      ref = sequence_logps(model(input_ids=ids).logits)
    pol = sequence_logps(model(input_ids=ids).logits)
    h = (pol[:batch_size] - ref[:batch_size]) - (pol[batch_size:] - ref[batch_size:])
    loss = -torch.nn.functional.logsigmoid(BETA * h).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return loss

  out["dpo_step_s"] = _median_time(dpo_step, steps)

  return out


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def versions() -> dict[str, str]:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  names = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft", "trl")
  found = {}
  for name in names:
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = "not installed"
  return found


def uptime() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


ROWS = (("lora_sft_tokens_per_s", "LoRA SFT tokens/s", True),
        ("lora_sft_step_s", "LoRA SFT step s", False),
        ("prefill_s", "prefill s", False),
        ("decode_tokens_per_s", "decode tokens/s", True),
        ("generate_tokens_per_s", "generate tokens/s (prefill+decode)", True),
        ("dpo_step_s", "DPO step s", False))


def comparison_rows(jax_out: dict[str, Any], torch_out: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per figure; `jax_speedup` > 1 means this codebase is faster."""
  rows = []
  for key, label, higher_is_better in ROWS:
    a, b = jax_out.get(key), torch_out.get(key)
    speedup = None
    if a and b:
      speedup = a / b if higher_is_better else b / a
    rows.append({"figure": label, "jax": a, "pytorch": b, "jax_speedup": speedup})
  return rows


_MODEL = flags.DEFINE_string("model", "gemma3_270m", "Model preset (random weights).")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Batch size / preference pairs.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per training row and prompt length.")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Decode steps after the first token.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed repetitions.")
_RANK = flags.DEFINE_integer("lora_rank", 8, "LoRA rank.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Weights of the PyTorch model; compute dtype of the JAX side.")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results here as JSON.")


def main(argv: list[str]) -> None:
  del argv
  env = {"uptime_before": uptime(), "cpu": cpu_model(), "cpus": os.cpu_count(),
         "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
         "versions": versions()}
  print(json.dumps(env, indent=1))
  cfg, params, _ = load_model(bench.model_section(_MODEL.value, "random", _DTYPE.value))
  b, t, n = _BATCH.value, _SEQ.value, _NEW.value
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = str(save_safetensors(cfg, jax.device_get(params), os.path.join(tmp, "hf")))
    start = time.perf_counter()
    torch_out = torch_side(hf_dir, b, t, n, _RANK.value, _STEPS.value, cfg.vocab_size,
                           _DTYPE.value)
    print(f"pytorch side done in {time.perf_counter() - start:.0f} s")
  start = time.perf_counter()
  jax_out = jax_side(cfg, params, b, t, n, _RANK.value, _STEPS.value)
  print(f"jax side done in {time.perf_counter() - start:.0f} s")
  agree = float(np.mean(jax_out.pop("greedy_tokens") == torch_out.pop("greedy_tokens")))
  env["uptime_after"] = uptime()
  rows = comparison_rows(jax_out, torch_out)
  print(f"{_MODEL.value}, random weights, {_DTYPE.value}, batch {b}, seq {t}, {n} + 1 new tokens, "
        f"LoRA rank {_RANK.value}; greedy tokens equal on both sides: {agree:.0%}")
  print(accounting.format_table(rows, ("figure", "jax", "pytorch", "jax_speedup")))
  print(f"uptime before: {env['uptime_before']}\nuptime after:  {env['uptime_after']}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"environment": env, "shapes": {"batch": b, "seq_len": t, "new_tokens": n,
                                                "lora_rank": _RANK.value, "dtype": _DTYPE.value},
                 "jax": jax_out, "pytorch": torch_out, "greedy_agreement": agree,
                 "rows": rows}, f, indent=2, default=str)
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
