"""Architecture hyper-parameters of the Gemma 1/2/3 families and their named presets.

One frozen dataclass describes every family; the differences between generations are flags
(soft-capping, post-norms, QK-norm, local/global layer pattern) rather than subclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

AttentionType = Literal["global", "local"]
# What each decoder block keeps for the backward pass (see `ModelConfig.remat`).
RematPolicy = Literal["none", "full", "dots_saveable"]
REMAT_POLICIES = ("none", "full", "dots_saveable")
# How attention scores are computed (see `ModelConfig.attention_impl`, `attention.implementation`).
AttentionImpl = Literal["auto", "explicit", "xla", "cudnn"]
ATTENTION_IMPLS = ("auto", "explicit", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static description of a Gemma-style decoder."""

  num_layers: int
  embed_dim: int
  hidden_dim: int  # FFN inner width
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab_size: int
  # Queries are multiplied by query_pre_attn_scalar ** -0.5.
  query_pre_attn_scalar: float
  # Per-layer attention kind, repeated cyclically over the layers.
  attention_pattern: tuple[AttentionType, ...] = ("global",)
  sliding_window_size: int | None = None
  attn_logits_soft_cap: float | None = None
  final_logit_soft_cap: float | None = None
  use_post_attn_norm: bool = False
  use_post_ffw_norm: bool = False
  use_qk_norm: bool = False
  rope_base_global: float = 10_000.0
  rope_base_local: float = 10_000.0
  # Positions of global layers are divided by this (Gemma 3 4B+ use 8 for long context).
  rope_scale_global: float = 1.0
  norm_eps: float = 1e-6
  # Compute dtype of activations; parameters are kept in param_dtype (float32 master weights).
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Execution choices; they change compile time and memory, never the numbers or the tree.
  # remat: "none" keeps every activation for the backward pass; "full" recomputes each
  # block's forward in the backward (keeps only block inputs); "dots_saveable" keeps the
  # projection matmul outputs and recomputes the rest, attention scores included (jax's
  # dots_with_no_batch_dims_saveable: the [B, K, G, T, S] score matmuls have batch dims).
  remat: RematPolicy = "none"
  # Run the layers as a `lax.scan` over repetitions of `attention_pattern` (remainder layers
  # unrolled): the compiled program holds one period of blocks instead of num_layers.
  scan_layers: bool = False
  # attention_impl: "explicit" materialises the float32 [B, K, G, T, S] scores in this
  # package; "xla" / "cudnn" call jax.nn.dot_product_attention with that implementation
  # (cuDNN flash: GPU, bf16/fp16 only); "auto" picks cudnn on a GPU where its constraints
  # hold, xla otherwise, and explicit where the fused call cannot express the model (logit
  # soft-capping, Gemma 2). Equal in float32 up to rounding (tests/test_attention_fused.py).
  attention_impl: AttentionImpl = "auto"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if "local" in self.attention_pattern and not self.sliding_window_size:
      raise ValueError("a 'local' attention layer needs sliding_window_size")
    for kind in self.attention_pattern:
      if kind not in ("global", "local"):
        raise ValueError(f"unknown attention type {kind!r}; expected 'global' or 'local'")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {self.remat!r}; expected one of "
                       f"{', '.join(REMAT_POLICIES)}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"unknown attention_impl {self.attention_impl!r}; expected one of "
                       f"{', '.join(ATTENTION_IMPLS)}")
    if self.attention_impl in ("xla", "cudnn") and self.attn_logits_soft_cap:
      raise ValueError(
          f"attention_impl={self.attention_impl!r} cannot express attn_logits_soft_cap="
          f"{self.attn_logits_soft_cap} (jax.nn.dot_product_attention has no logit "
          "soft-cap): use 'auto' or 'explicit'")

  @property
  def attention_types(self) -> tuple[AttentionType, ...]:
    """The attention kind of each layer, in order."""
    pattern = self.attention_pattern
    return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self, include_embedding: bool = True) -> int:
    """Parameter count, computed from the shapes (used for FLOP and memory accounting)."""
    d, h = self.embed_dim, self.head_dim
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    mlp = 3 * d * self.hidden_dim
    norms = d * (2 + self.use_post_attn_norm + self.use_post_ffw_norm)
    norms += 2 * h * self.use_qk_norm
    total = self.num_layers * (attn + mlp + norms) + d
    if include_embedding:
      total += self.vocab_size * d
    return total


_LOCAL5_GLOBAL1 = ("local",) * 5 + ("global",)

PRESETS: dict[str, ModelConfig] = {
    # Gemma 1 (Team Gemma, 2024).
    "gemma_2b": ModelConfig(
        num_layers=18, embed_dim=2048, hidden_dim=16384, num_heads=8, num_kv_heads=1,
        head_dim=256, vocab_size=256128, query_pre_attn_scalar=256),
    "gemma_7b": ModelConfig(
        num_layers=28, embed_dim=3072, hidden_dim=24576, num_heads=16, num_kv_heads=16,
        head_dim=256, vocab_size=256128, query_pre_attn_scalar=256),
    # Gemma 2: alternating local/global, soft-capping, post-norms.
    "gemma2_2b": ModelConfig(
        num_layers=26, embed_dim=2304, hidden_dim=9216, num_heads=8, num_kv_heads=4,
        head_dim=256, vocab_size=256128, query_pre_attn_scalar=256,
        attention_pattern=("local", "global"), sliding_window_size=4096,
        attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0,
        use_post_attn_norm=True, use_post_ffw_norm=True),
    "gemma2_9b": ModelConfig(
        num_layers=42, embed_dim=3584, hidden_dim=14336, num_heads=16, num_kv_heads=8,
        head_dim=256, vocab_size=256128, query_pre_attn_scalar=256,
        attention_pattern=("local", "global"), sliding_window_size=4096,
        attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0,
        use_post_attn_norm=True, use_post_ffw_norm=True),
    # Gemma 3: 5 local : 1 global, QK-norm instead of soft-capping, two RoPE bases.
    "gemma3_270m": ModelConfig(
        num_layers=18, embed_dim=640, hidden_dim=2048, num_heads=4, num_kv_heads=1,
        head_dim=256, vocab_size=262144, query_pre_attn_scalar=256,
        attention_pattern=_LOCAL5_GLOBAL1, sliding_window_size=512,
        use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
        rope_base_local=10_000.0, rope_base_global=1_000_000.0),
    "gemma3_1b": ModelConfig(
        num_layers=26, embed_dim=1152, hidden_dim=6912, num_heads=4, num_kv_heads=1,
        head_dim=256, vocab_size=262144, query_pre_attn_scalar=256,
        attention_pattern=_LOCAL5_GLOBAL1, sliding_window_size=512,
        use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
        rope_base_local=10_000.0, rope_base_global=1_000_000.0),
    "gemma3_4b": ModelConfig(
        num_layers=34, embed_dim=2560, hidden_dim=10240, num_heads=8, num_kv_heads=4,
        head_dim=256, vocab_size=262208, query_pre_attn_scalar=256,
        attention_pattern=_LOCAL5_GLOBAL1, sliding_window_size=1024,
        use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
        rope_base_local=10_000.0, rope_base_global=1_000_000.0, rope_scale_global=8.0),
    # Tiny random-init configs for tests: one per family, small enough to compile in seconds.
    "tiny_gemma1": ModelConfig(
        num_layers=2, embed_dim=64, hidden_dim=128, num_heads=4, num_kv_heads=1,
        head_dim=16, vocab_size=512, query_pre_attn_scalar=16),
    "tiny_gemma2": ModelConfig(
        num_layers=4, embed_dim=64, hidden_dim=128, num_heads=4, num_kv_heads=2,
        head_dim=16, vocab_size=512, query_pre_attn_scalar=16,
        attention_pattern=("local", "global"), sliding_window_size=8,
        attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0,
        use_post_attn_norm=True, use_post_ffw_norm=True),
    "tiny_gemma3": ModelConfig(
        num_layers=6, embed_dim=64, hidden_dim=128, num_heads=4, num_kv_heads=1,
        head_dim=16, vocab_size=512, query_pre_attn_scalar=16,
        attention_pattern=("local", "local", "global"), sliding_window_size=8,
        use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
        rope_base_local=10_000.0, rope_base_global=1_000_000.0),
}


def get_config(name: str, **overrides) -> ModelConfig:
  """Returns the preset called `name`, with optional field overrides."""
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
