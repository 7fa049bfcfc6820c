"""What each phase measures at a scale: `tiny` rehearses the whole run on a CPU in seconds,
`h200` is sized for one H200 and a 15-minute device lease.

The guesses (`*_guess_s`, efficiencies) only decide, before an item starts, whether it can
finish inside the budget; the run replaces them with what it observes (compile seconds per
layer) as it goes. They are estimates, not measurements.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainItem:
  model: str
  mode: str  # "full" | "lora"
  batch: int
  seq: int


@dataclasses.dataclass(frozen=True)
class Scale:
  name: str
  dtype: str
  # Phase 1: square bf16 matmul of side matmul_n; a read + write of copy_bytes.
  matmul_n: int
  copy_bytes: int
  ceiling_repeats: int
  # Phase 2, in priority order (the full fine-tuning of the larger model first: its MFU is
  # the headline target).
  train: tuple[TrainItem, ...]
  train_steps: int
  lora_rank: int
  logits_chunk: int  # 0: full logits
  # Phase 3: every model at every batch, one prompt length, greedy, no stop ids.
  sample_models: tuple[str, ...]
  sample_batches: tuple[int, ...]
  prompt_len: int
  new_tokens: int
  sample_repeats: int
  # Phase 4: experiments/benchmarks/vs_pytorch.py at (batch, prompt_len, new_tokens).
  torch_model: str
  torch_batches: tuple[int, ...]
  torch_steps: int
  # Phase 5: the paper-scale subset (always recorded; run only where it fits).
  repro_num_safety: tuple[int, ...] = (0, 300, 2000)
  repro_formats: tuple[str, ...] = ("instruction",)
  # Cost guesses for the budget check, replaced by observed figures as the run goes.
  ceilings_guess_s: float = 1.0
  load_guess_s: float = 1.0
  train_compile_guess_s_per_layer: float = 1.0
  sample_compile_guess_s_per_layer: float = 0.5
  flops_efficiency_guess: float = 0.3  # of the measured matmul ceiling
  bandwidth_efficiency_guess: float = 0.3  # of the measured copy bandwidth
  torch_item_guess_s: float = 60.0
  repro_point_guess_s: float = 600.0


# Tiny: training on the 2-layer tiny_gemma1 (half the compile time of tiny_gemma3 on a busy
# CPU), sampling on tiny_gemma3 (local + global layers, as in the real presets).
TINY = Scale(
    name="tiny", dtype="bfloat16", matmul_n=256, copy_bytes=16 << 20, ceiling_repeats=3,
    train=(TrainItem("tiny_gemma1", "full", 2, 32), TrainItem("tiny_gemma1", "lora", 2, 32)),
    train_steps=2, lora_rank=4, logits_chunk=0,
    sample_models=("tiny_gemma3",), sample_batches=(1, 2), prompt_len=16, new_tokens=7,
    sample_repeats=2, torch_model="tiny_gemma3", torch_batches=(1,), torch_steps=1,
    ceilings_guess_s=1.0, load_guess_s=0.5, train_compile_guess_s_per_layer=3.0,
    sample_compile_guess_s_per_layer=0.5, torch_item_guess_s=60.0, repro_point_guess_s=60.0)

# Sizes for one H200 (~139 GiB). 270M at 16 x 1024 and 1B at 8 x 2048 are 16k tokens a step;
# the 1B full step holds ~16 GB of float32 weights + gradients + Adam moments and, without a
# fused attention kernel, [B, heads, T, T] scores on every layer plus [B, T, 262144] logits:
# an estimated ~100 GB, which the run halves (batch) and retries on an out-of-memory error.
# vs_pytorch runs at batches 1 and 8: its DPO step at 32 pairs x 512 tokens would hold ~120 GB
# of float32 log-probabilities over the 262k vocabulary on the PyTorch side alone.
H200 = Scale(
    name="h200", dtype="bfloat16", matmul_n=16384, copy_bytes=2 << 30, ceiling_repeats=10,
    train=(TrainItem("gemma3_1b", "full", 8, 2048), TrainItem("gemma3_270m", "full", 16, 1024),
           TrainItem("gemma3_270m", "lora", 16, 1024), TrainItem("gemma3_1b", "lora", 8, 2048)),
    train_steps=5, lora_rank=8, logits_chunk=0,
    sample_models=("gemma3_270m", "gemma3_1b"), sample_batches=(1, 32), prompt_len=512,
    new_tokens=127, sample_repeats=3, torch_model="gemma3_270m", torch_batches=(1, 8),
    torch_steps=2, ceilings_guess_s=15.0, load_guess_s=5.0,
    train_compile_guess_s_per_layer=2.0, sample_compile_guess_s_per_layer=1.0,
    torch_item_guess_s=150.0, repro_point_guess_s=600.0)

SCALES = {"tiny": TINY, "h200": H200}
