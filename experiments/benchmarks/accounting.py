"""What a step should cost: FLOPs, bytes moved, device peaks, and the table the benchmarks print.

Training FLOPs follow the PaLM count of `alignment.training.metrics` (6N per token plus
attention). A LoRA step with a frozen base needs no weight gradients for the base, so its model
FLOPs are 4N (forward + activation gradients) plus 6 per adapter parameter. Decode is
memory-bound: each step must read every parameter and the KV cache it attends over, so its
floor is those bytes over the device's HBM bandwidth.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np

from alignment import lora as lora_lib
from alignment.model.config import ModelConfig
from alignment.training import metrics

# HBM bandwidth per device (one chip) in bytes/s. Sources: Cloud TPU system architecture pages
# (v4 1,200 GB/s; v5e 819 GB/s; v5p 2,765 GB/s; v6e 1,640 GB/s) and NVIDIA datasheets (A100 40GB
# 1,555 GB/s, 80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s; H100 SXM 3.35 TB/s, PCIe 2.0 TB/s;
# H200 4.8 TB/s). Matched like the peak FLOPs table: substrings of `device_kind`, longest first.
HBM_BANDWIDTH_PER_DEVICE: dict[str, float] = {
    "TPU v4": 1200e9,
    "TPU v5 lite": 819e9,  # v5e
    "TPU v5e": 819e9,
    "TPU v5p": 2765e9,
    "TPU v5": 2765e9,  # v5p reports "TPU v5"
    "TPU v6 lite": 1640e9,  # v6e (Trillium)
    "TPU v6e": 1640e9,
    "A100-SXM4-80GB": 2039e9,
    "A100 80GB PCIe": 1935e9,
    "A100": 1555e9,
    "H100 PCIe": 2000e9,
    "H100": 3350e9,  # SXM
    "H200": 4800e9,
}


def lookup_device(table: dict[str, float], device: jax.Device | None = None) -> float | None:
  """The entry of `table` whose key is the longest substring of the device kind; None on CPU."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None
  for key in sorted(table, key=len, reverse=True):
    if key in device.device_kind:
      return table[key]
  return None


def hbm_bandwidth_per_device(device: jax.Device | None = None) -> float | None:
  return lookup_device(HBM_BANDWIDTH_PER_DEVICE, device)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  return metrics.peak_flops_per_device(device)


# ------------------------------------------------------------------------------------------------
# FLOPs.


def num_lora_params(cfg: ModelConfig, lcfg: lora_lib.LoraConfig) -> int:
  """Adapter parameters, counted from the shapes `init_adapters` would create."""
  shapes = jax.eval_shape(lambda: lora_lib.init_adapters(cfg, lcfg, jax.random.key(0)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward + backward score and value FLOPs per token (12 per head dim per attended key)."""
  total = 0.0
  for kind in cfg.attention_types:
    span = seq_len if kind == "global" else min(seq_len, cfg.sliding_window_size)
    total += 12.0 * cfg.num_heads * cfg.head_dim * span
  return total


def train_flops_per_step(cfg: ModelConfig, batch_size: int, seq_len: int,
                         lcfg: lora_lib.LoraConfig | None = None) -> float:
  """Model FLOPs of one training step on [batch_size, seq_len] inputs.

  Full fine-tuning: the 6N + attention count of `metrics.model_flops_per_step`. LoRA: the base
  costs 4N per token (no base weight gradients are needed), the adapters 6 per parameter.
  """
  if lcfg is None:
    return metrics.model_flops_per_step(cfg, batch_size, seq_len)
  per_token = (4.0 * cfg.num_params() + 6.0 * num_lora_params(cfg, lcfg)
               + attention_flops_per_token(cfg, seq_len))
  return per_token * batch_size * seq_len


def forward_flops(cfg: ModelConfig, batch_size: int, seq_len: int) -> float:
  """FLOPs of one forward pass over [batch_size, seq_len] tokens (a third of training)."""
  return metrics.model_flops_per_step(cfg, batch_size, seq_len) / 3.0


def prefill_flops(cfg: ModelConfig, batch_size: int, prompt_len: int) -> float:
  """FLOPs of the sampler's prefill: a forward pass whose vocabulary projection runs at the
  last position only (the sampler needs no other logits)."""
  skipped = 2.0 * cfg.vocab_size * cfg.embed_dim * batch_size * (prompt_len - 1)
  return forward_flops(cfg, batch_size, prompt_len) - skipped


def decode_flops_per_step(cfg: ModelConfig, batch_size: int, kv_len: int) -> float:
  """Forward FLOPs of one decode step: one new token per row attending over `kv_len` slots."""
  per_token = 2.0 * cfg.num_params() + attention_flops_per_token(cfg, kv_len) / 3.0
  return per_token * batch_size


# ------------------------------------------------------------------------------------------------
# Bytes and the bandwidth bound of decode.


def param_bytes(cfg: ModelConfig, dtype: Any) -> int:
  return cfg.num_params() * np.dtype(dtype).itemsize


def kv_cache_bytes(cfg: ModelConfig, batch_size: int, kv_len: int, dtype: Any,
                   window_aware: bool = False) -> int:
  """Bytes of keys and values a decode step reads. The sampler's local layers read the whole
  allocated cache (the sliding band is a mask), so `window_aware=False` matches it; True gives
  the floor of a cache that stores only each local layer's window."""
  slots = 0
  for kind in cfg.attention_types:
    slots += kv_len if kind == "global" or not window_aware else min(kv_len,
                                                                     cfg.sliding_window_size)
  return 2 * batch_size * slots * cfg.num_kv_heads * cfg.head_dim * np.dtype(dtype).itemsize


def decode_bytes_per_step(cfg: ModelConfig, batch_size: int, kv_len: int, param_dtype: Any,
                          cache_dtype: Any, window_aware: bool = False) -> int:
  """Bytes a decode step must read at least: all parameters once plus the KV cache."""
  return (param_bytes(cfg, param_dtype)
          + kv_cache_bytes(cfg, batch_size, kv_len, cache_dtype, window_aware))


def bandwidth_fraction(bytes_per_step: float, seconds_per_step: float,
                       bandwidth: float | None) -> float | None:
  """Achieved bytes/s over the device's bandwidth: 1.0 means the step ran at the memory floor."""
  if not bandwidth or seconds_per_step <= 0:
    return None
  return bytes_per_step / seconds_per_step / bandwidth


# ------------------------------------------------------------------------------------------------
# Compiled-program facts and the printed table.


def memory_summary(compiled: Any) -> dict[str, int] | None:
  """Per-device bytes of a compiled program by XLA's memory analysis (None if unsupported).

  peak = arguments + outputs + temporaries - aliased (donated) buffers.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if m is None:
    return None
  out = {"argument_bytes": int(m.argument_size_in_bytes),
         "output_bytes": int(m.output_size_in_bytes),
         "temp_bytes": int(m.temp_size_in_bytes),
         "alias_bytes": int(m.alias_size_in_bytes)}
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                       - out["alias_bytes"])
  return out


def format_value(value: Any) -> str:
  """n/a for missing figures; SI prefixes for big numbers; 3 significant digits otherwise."""
  if value is None:
    return "n/a"
  if isinstance(value, str):
    return value
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, int) and abs(value) < 10_000:
    return str(value)
  value = float(value)
  if not math.isfinite(value):
    return str(value)
  for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(value) >= scale:
      return f"{value / scale:.3g}{suffix}"
  return f"{value:.3g}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  """A plain-text table, one row per dict; a missing key shows as n/a."""
  cells = [[format_value(row.get(c)) for c in columns] for row in rows]
  widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
  lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
           "  ".join("-" * w for w in widths)]
  lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
  return "\n".join(lines)
