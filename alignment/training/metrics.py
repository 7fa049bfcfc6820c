"""Run metrics: progress bar (or, without it, log lines), TensorBoard events, JSON summary,
FLOPs and MFU.

TensorBoard files are written with `tensorboardX`, which needs only numpy and protobuf; the
writers in flax.metrics and clu import TensorFlow, which this project does not install.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import jax
from tqdm.auto import tqdm

from alignment.model import ModelConfig
from alignment.files import atomic

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device (one chip; TPU v2/v3 chips hold two cores that JAX shows
# as one device since v4 only, so v2/v3 are listed per core). Sources: Cloud TPU system
# architecture pages and NVIDIA datasheets (dense, no sparsity). Matched as substrings of
# `device.device_kind`, longest first.
PEAK_FLOPS_PER_DEVICE: dict[str, float] = {
    "TPU v2": 22.5e12,
    "TPU v3": 61.5e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # v5p reports "TPU v5"
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "B200": 2250e12,
    "L4": 121e12,
}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """The device's dense bf16 peak, or None where unknown (e.g. CPU)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None
  kind = device.device_kind
  for key in sorted(PEAK_FLOPS_PER_DEVICE, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS_PER_DEVICE[key]
  return None


def model_flops_per_step(config: ModelConfig, batch_size: int, seq_len: int) -> float:
  """Training FLOPs of one step by the PaLM count: 6*N per token for the weights (N counts
  the tied embedding once: its output projection is a real matmul) plus 12*L*heads*head_dim
  *span per token for attention scores and values, with span = seq_len on global layers and
  the sliding window on local ones (causal masking is not halved, as in PaLM)."""
  per_token = 6.0 * config.num_params()
  for kind in config.attention_types:
    span = seq_len if kind == "global" else min(seq_len, config.sliding_window_size)
    per_token += 12.0 * config.num_heads * config.head_dim * span
  return per_token * batch_size * seq_len


def _analysed_flops(stage: Any) -> float | None:
  """FLOPs by XLA's cost analysis of a lowered or compiled program (None if unavailable)."""
  try:
    analysis = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends do not implement it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis or analysis["flops"] <= 0:
    return None
  return float(analysis["flops"])


def compiled_flops(compiled: Any, num_devices: int) -> float | None:
  """Total FLOPs of a compiled executable by XLA's cost analysis (None if unavailable).

  For an SPMD program XLA analyses the per-device module, so it is scaled by the number of
  devices (`num_devices`, the mesh size) the executable runs on.
  """
  flops = _analysed_flops(compiled)
  return None if flops is None else flops * num_devices


def lowered_flops(lowered: Any) -> float | None:
  """Total FLOPs of a lowered (not yet compiled) program by XLA's cost analysis.

  The lowered module is the global program, before SPMD partitioning and before XLA's
  optimisations, so its count needs no scaling by devices and leaves out rematerialised
  recomputation (what MFU should count). It costs no compilation, which matters to a loop
  that would otherwise compile its step a second time just to count.
  """
  return _analysed_flops(lowered)


def mfu(flops_per_step: float | None, seconds_per_step: float, num_devices: int,
        peak_per_device: float | None) -> float | None:
  """Model FLOPs utilisation: achieved FLOP/s over the devices' combined peak."""
  if not flops_per_step or not peak_per_device or seconds_per_step <= 0:
    return None
  return flops_per_step / seconds_per_step / (peak_per_device * num_devices)


def format_duration(seconds: float) -> str:
  """'1:02:03', '2:03' or '7s': an ETA readable at a glance."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}:{minutes:02d}:{secs:02d}"
  return f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


def progress_line(step: int, total: int, scalars: dict[str, float],
                  eta_seconds: float | None) -> str:
  """'step 40/100: loss=2.31 tokens/s=1,520 eta=1:05 | grad_norm=0.8 ...' (one log line)."""
  head = [f"step {step}/{total}:"]
  if scalars.get("loss") is not None:
    head.append(f"loss={scalars['loss']:.4g}")
  if scalars.get("tokens_per_sec") is not None:
    head.append(f"tokens/s={scalars['tokens_per_sec']:,.0f}")
  if eta_seconds is not None:
    head.append(f"eta={format_duration(eta_seconds)}")
  rest = [f"{k}={v:.4g}" for k, v in scalars.items()
          if k not in ("loss", "tokens_per_sec") and isinstance(v, (int, float))]
  return " ".join(head) + (" | " + " ".join(rest) if rest else "")


class MetricsLogger:
  """Progress bar, TensorBoard scalars and the final JSON summary; silent unless `enabled`
  (only process 0 of a multi-host run writes). Without the bar (logs of batch jobs), each
  `log` call is one INFO line with step, loss, tokens/s and the ETA (unless `log_lines` is
  False: a caller that prints its own)."""

  def __init__(self, output_dir: str | None, total_steps: int, initial_step: int = 0,
               enabled: bool = True, progress_bar: bool = True, log_lines: bool = True):
    self.enabled = enabled
    self.output_dir = output_dir
    self.total_steps = total_steps
    self._log_lines = log_lines and not progress_bar  # a caller printing its own lines: False
    self._bar = None
    self._writer = None
    self._first_logged: tuple[float, int] | None = None  # (time, step) of the first loss line
    if not enabled:
      return
    if progress_bar:
      self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)
    if output_dir:
      from tensorboardX import SummaryWriter  # Deferred: only process 0 needs it.
      os.makedirs(output_dir, exist_ok=True)
      self._writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

  def advance(self, steps: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(steps)

  def log(self, step: int, scalars: dict[str, float]) -> None:
    """Writes `scalars` at `step` and shows loss and tokens/s on the bar."""
    if not self.enabled:
      return
    if self._writer is not None:
      for name, value in scalars.items():
        if value is not None:
          self._writer.add_scalar(name, value, step)
    if self._bar is not None:
      shown = {k: scalars[k] for k in ("loss", "tokens_per_sec", "mfu") if
               scalars.get(k) is not None}
      self._bar.set_postfix({k: (f"{v:.4g}" if k != "tokens_per_sec" else f"{v:,.0f}")
                             for k, v in shown.items()}, refresh=False)
    elif self._log_lines:
      log.info("%s", progress_line(step, self.total_steps, scalars, self._eta(step, scalars)))

  def _eta(self, step: int, scalars: dict[str, float]) -> float | None:
    """Seconds left: the wall-clock rate since the first loss line (evaluation hooks and
    checkpoints included), or, at that first line, the loop's steps/s."""
    if "loss" not in scalars:
      return None
    now = time.perf_counter()
    if self._first_logged is None:
      self._first_logged = (now, step)
    t0, step0 = self._first_logged
    if step > step0:
      rate = (step - step0) / (now - t0)
    else:
      rate = scalars.get("steps_per_sec")
    return (self.total_steps - step) / rate if rate else None

  def message(self, text: str) -> None:
    if self.enabled:
      (self._bar.write if self._bar is not None else print)(text)

  def write_summary(self, summary: dict[str, Any]) -> str | None:
    """Writes `summary.json` (non-finite floats become null) and returns its path."""
    if not (self.enabled and self.output_dir):
      return None
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in summary.items()}
    path = os.path.join(self.output_dir, "summary.json")
    atomic.write_json(path, clean, sort_keys=True, default=None)
    return path

  def close(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()
    if self._bar is not None:
      self._bar.close()


def count_tokens(batch: Any) -> int:
  """Tokens in a batch: the sizes of all leaves keyed "tokens" (pairs have two)."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
    if getattr(path[-1], "key", None) == "tokens":
      total += leaf.size
  return total

