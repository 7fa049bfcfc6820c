"""The benchmarks' accounting: FLOPs, bytes, device tables, the printed table, one timed step."""

from __future__ import annotations

import logging
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import lora as lora_lib
from alignment.model.config import get_config
from alignment.model.masks import causal_mask
from alignment.model.transformer import forward, init_cache, init_params
from alignment.training import losses
from experiments.benchmarks import accounting, measure, roofline, sampler_speed


def _size(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny1():
  cfg = get_config("tiny_gemma1")
  return cfg, init_params(cfg, jax.random.key(0))


def test_full_training_flops_are_6n_per_token_plus_attention(tiny1):
  cfg, params = tiny1
  batch, seq = 3, 40
  attention = sum(12 * cfg.num_heads * cfg.head_dim * seq for _ in range(cfg.num_layers))
  expected = (6 * _size(params) + attention) * batch * seq
  assert accounting.train_flops_per_step(cfg, batch, seq) == pytest.approx(expected, rel=1e-12)


def test_lora_flops_drop_base_weight_gradients_and_add_adapters():
  cfg = get_config("tiny_gemma3")
  lcfg = lora_lib.LoraConfig(rank=4, targets=("q", "v", "down"))
  adapters = lora_lib.init_adapters(cfg, lcfg, jax.random.key(1))
  assert accounting.num_lora_params(cfg, lcfg) == _size(adapters)
  batch, seq = 2, 32
  full = accounting.train_flops_per_step(cfg, batch, seq)
  lora = accounting.train_flops_per_step(cfg, batch, seq, lcfg)
  n, n_lora = _size(init_params(cfg, jax.random.key(0))), _size(adapters)
  assert full - lora == pytest.approx((2 * n - 6 * n_lora) * batch * seq, rel=1e-12)


def test_forward_flops_match_xla_cost_analysis(tiny1):
  """All-global tiny model: the count is matmuls + attention, which XLA's analysis also sees
  (plus a few percent of elementwise work)."""
  cfg, params = tiny1
  batch, seq = 2, 64
  tokens = jnp.zeros((batch, seq), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
  mask = causal_mask(jnp.ones((batch, seq), bool))
  compiled = jax.jit(lambda p, t: forward(cfg, p, t, positions, mask)[0]).lower(
      params, tokens).compile()
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  analytic = accounting.forward_flops(cfg, batch, seq)
  assert analytic <= xla["flops"] <= 1.06 * analytic


def test_decode_bytes_are_params_plus_the_cache_arrays():
  cfg = get_config("tiny_gemma3")  # local layers with a window of 8
  params = init_params(cfg, jax.random.key(0))
  batch, kv_len = 3, 20
  cache = init_cache(cfg, batch, kv_len, dtype="bfloat16")
  cache_bytes = sum(cache[f"layer_{i}"][k].nbytes for i in range(cfg.num_layers)
                    for k in ("k", "v"))
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))  # float32
  assert accounting.decode_bytes_per_step(cfg, batch, kv_len, np.float32,
                                          jnp.bfloat16) == param_bytes + cache_bytes
  # A window-aware cache keeps only 8 slots on local layers.
  windowed = sum(cache[f"layer_{i}"][k][:, :(kv_len if kind == "global" else 8)].nbytes
                 for i, kind in enumerate(cfg.attention_types) for k in ("k", "v"))
  assert accounting.kv_cache_bytes(cfg, batch, kv_len, jnp.bfloat16,
                                   window_aware=True) == windowed


def test_bandwidth_fraction_arithmetic():
  # 1 GB read in 1 ms is 1 TB/s: half of a 2 TB/s device.
  assert accounting.bandwidth_fraction(1e9, 1e-3, 2e12) == pytest.approx(0.5)
  assert accounting.bandwidth_fraction(1e9, 1e-3, None) is None
  assert accounting.bandwidth_fraction(1e9, 0.0, 2e12) is None


@pytest.mark.parametrize("kind,platform,bandwidth", [
    ("NVIDIA H100 80GB HBM3", "gpu", 3350e9),
    ("NVIDIA H100 PCIe", "gpu", 2000e9),
    ("NVIDIA H200", "gpu", 4800e9),
    ("NVIDIA A100-SXM4-80GB", "gpu", 2039e9),
    ("NVIDIA A100-SXM4-40GB", "gpu", 1555e9),
    ("TPU v4", "tpu", 1200e9),
    ("TPU v5 lite", "tpu", 819e9),
    ("TPU v5", "tpu", 2765e9),
    ("TPU v6 lite", "tpu", 1640e9),
    ("Some new chip", "gpu", None),
    ("cpu", "cpu", None),
])
def test_bandwidth_table_lookup(kind, platform, bandwidth):
  device = types.SimpleNamespace(device_kind=kind, platform=platform)
  assert accounting.hbm_bandwidth_per_device(device) == bandwidth


def test_every_bandwidth_entry_has_a_peak_flops_entry():
  """The two tables describe the same devices, so MFU and the bandwidth bound come together."""
  for kind in accounting.HBM_BANDWIDTH_PER_DEVICE:
    device = types.SimpleNamespace(device_kind=kind, platform="tpu" if "TPU" in kind else "gpu")
    assert accounting.peak_flops_per_device(device) is not None, kind


def test_format_table_aligns_columns_and_marks_missing_values():
  rows = [{"mode": "decode", "tokens_per_s": 1234567.0, "mfu": None},
          {"mode": "train_full", "tokens_per_s": 0.5}]
  text = accounting.format_table(rows, ("mode", "tokens_per_s", "mfu"))
  lines = text.splitlines()
  assert len(lines) == 4 and len({len(line) for line in lines}) == 1
  assert lines[2].split() == ["decode", "1.23M", "n/a"]
  assert lines[3].split() == ["train_full", "0.5", "n/a"]
  assert accounting.format_value(3) == "3" and accounting.format_value(2.5e12) == "2.5T"


def test_bench_train_reports_consistent_figures(tiny1):
  cfg, params = tiny1
  row = measure.bench_train(cfg, params, None, batch_size=2, seq_len=16, steps=1)
  assert row["tokens_per_s"] == pytest.approx(2 * 16 / row["step_s"])
  assert row["model_flops"] == accounting.train_flops_per_step(cfg, 2, 16)
  assert row["flops_per_s"] == pytest.approx(row["model_flops"] / row["step_s"])
  assert row["mfu"] is None  # no peak for CPU
  # The timed step runs the SFT loss on the benchmark's batch.
  batch = jax.tree.map(jnp.asarray, measure.random_batch(cfg.vocab_size, 2, 16))
  expected, _ = losses.language_model_loss(cfg)(params, batch, jax.random.key(0))
  assert row["first_loss"] == pytest.approx(float(expected), rel=1e-5)
  # The state (params + two Adam moments) is an argument; the program needs at least that.
  assert row["argument_bytes"] >= 3 * sum(x.nbytes for x in jax.tree.leaves(params))
  assert row["peak_bytes"] >= row["argument_bytes"]


def test_sampler_speed_times_prefill_and_decode_with_one_program(tiny1, caplog):
  """Prefill (budget 1) and full (budget 1 + N) calls must run the same compiled program with
  the same cache, or their difference is not N decode steps (`generate` alone would compile
  a 16-slot and a 128-slot program for N = 64)."""
  cfg, params = tiny1
  with caplog.at_level(logging.WARNING), jax.log_compiles():
    row = sampler_speed.measure_batch(cfg, params, batch=2, prompt_len=16, new_tokens=63,
                                      repeats=1)
  compiles = [r for r in caplog.records if "jit(generate_padded)" in r.getMessage()
              and r.getMessage().startswith("Compiling")]
  assert len(compiles) == 1, [r.getMessage()[:80] for r in compiles]
  assert row["kv_len"] == 16 + 64  # budget 1 + 63 fills the 64-slot capacity exactly
  assert row["prefill_tokens_per_s"] == pytest.approx(2 * 16 / row["prefill_s"])


def test_bench_train_variants_run_the_same_loss(tiny1):
  """Unmerged LoRA and the chunked cross-entropy change the cost, not the first loss."""
  cfg, params = tiny1
  lcfg = lora_lib.LoraConfig(rank=2, alpha=4.0)
  rows = [measure.bench_train(cfg, params, lcfg, 2, 16, steps=1, unmerged=unmerged,
                              logits_chunk=chunk)
          for unmerged, chunk in ((False, None), (True, 4))]
  assert [(r["mode"], r["logits_chunk"]) for r in rows] == [("train_lora", None),
                                                            ("train_lora_unmerged", 4)]
  assert rows[1]["first_loss"] == pytest.approx(rows[0]["first_loss"], rel=1e-5)


def test_roofline_ceilings_are_measured_and_ratios_are_achieved_over_ceiling():
  peak = roofline.matmul_peak(n=256, repeats=2)
  read = roofline.read_bandwidth(nbytes=8 * 2**20, repeats=2)
  copy = roofline.copy_bandwidth(nbytes=8 * 2**20, repeats=2)
  # Any real machine: between 10 MFLOP/s and 10 PFLOP/s, 10 MB/s and 100 TB/s.
  assert 1e7 < peak < 1e16 and 1e7 < read < 1e14 and 1e7 < copy < 1e14
  assert roofline.best({"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 2.0}) == {"a": 3.0, "b": 5.0}
  rows = roofline.with_ratios(
      [{"mode": "train_lora", "flops_per_s": 3e9}, {"mode": "decode", "bytes_per_s": 1e9},
       {"mode": "prefill", "flops_per_s": None}],
      {"matmul_flops_per_s": 1.2e10, "read_bytes_per_s": 4e9, "copy_bytes_per_s": 1e9})
  assert rows[0]["flops_ratio"] == pytest.approx(0.25) and "bytes_ratio" not in rows[0]
  assert rows[1]["bytes_ratio"] == pytest.approx(0.25) and "flops_ratio" not in rows[1]
  assert "flops_ratio" not in rows[2]


def test_prefill_flops_count_the_vocabulary_projection_at_the_last_position_only(tiny1):
  """The sampler's prefill decodes one position: XLA's count of that program (hidden states,
  then the last position's logits) matches `prefill_flops`, not the full forward."""
  cfg, params = tiny1
  batch, seq = 2, 64
  tokens = jnp.zeros((batch, seq), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
  mask = causal_mask(jnp.ones((batch, seq), bool))

  def prefill(p, t):
    hidden = forward(cfg, p, t, positions, mask, return_hidden=True)[0]
    return jnp.einsum("bd,vd->bv", hidden[:, -1], p["embedder"]["input_embedding"])

  xla = jax.jit(prefill).lower(params, tokens).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  analytic = accounting.prefill_flops(cfg, batch, seq)
  assert analytic < accounting.forward_flops(cfg, batch, seq)
  assert analytic <= xla["flops"] <= 1.06 * analytic
