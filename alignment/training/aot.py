"""Ahead-of-time compilation of a train step for a named TPU topology, from a CPU machine.

libtpu's compile-only path describes a TPU slice (`get_topology_desc`) without owning one, so
XLA can partition and compile the real step for it and report how much HBM each chip needs,
before a pod is booked. Needs the optional `libtpu` package (pinned by `jax[tpu]`).

A step to compile is a `StepSpec`: abstract parameters (traced under `eval_shape`, never
allocated), their shardings, the frozen parts, the loss and the batch's shapes. This module
builds the language-model and LoRA-SFT specs; `alignment.rl.aot` builds PPO's. One compile
from the command line: `experiments/aot_compile.py`; the table of them: `experiments/tpu_aot.py`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import Mesh

from alignment import lora as lora_lib
from alignment import model, sharding
from alignment.training import losses, metrics, optimizer, step as step_lib, train_state

# HBM per chip in bytes, to say whether a compiled step fits (Cloud TPU docs).
HBM_BYTES_PER_CHIP = {
    "TPU v4": 32 * 2**30,
    "TPU v5 lite": 16 * 2**30,
    "TPU v5": 95 * 2**30,
    "TPU v6 lite": 32 * 2**30,
}


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """One train step to compile, described without any concrete array."""

  init_params: Callable[[jax.Array], Any]  # rng -> params; only ever traced (eval_shape)
  param_shardings: Callable[[Mesh, Any], Any]  # (mesh, abstract params) -> shardings
  loss_fn: step_lib.LossFn
  batch: dict[str, jax.ShapeDtypeStruct]  # global shapes
  frozen: tuple[str, ...] = ()  # optimizer.OptimizerConfig.frozen regexes


@dataclasses.dataclass(frozen=True)
class AotReport:
  topology: str
  device_kind: str
  num_chips: int
  mesh: dict[str, int]
  argument_bytes: int  # per chip: state + batch shards
  output_bytes: int
  alias_bytes: int  # outputs that reuse donated argument buffers
  temp_bytes: int  # activations, gradients, XLA scratch
  generated_code_bytes: int
  peak_bytes: int | None  # arguments + outputs - aliased + temporaries + code
  hbm_bytes: int | None
  fits: bool | None
  flops_per_step: float | None
  error: str | None = None  # XLA's message when the step does not fit at all
  compile_seconds: float | None = None  # lowering + compilation on this machine


def tpu_topology_devices(topology: str) -> list[Any]:
  """The devices of a named TPU topology (e.g. 'v5e:2x2'), via libtpu's compile-only path."""
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
  except Exception as error:  # pylint: disable=broad-except
    raise RuntimeError(f"cannot describe TPU topology {topology!r} ({error}); AOT compilation "
                       "needs the optional libtpu package: pip install 'jax[tpu]'") from error


def hbm_bytes_of(device_kind: str) -> int | None:
  """HBM per chip of a TPU device kind ('TPU v5 lite' before 'TPU v5'), None if unknown."""
  return next((v for k, v in sorted(HBM_BYTES_PER_CHIP.items(), key=lambda kv: -len(kv[0]))
               if k in device_kind), None)


def lm_step(model_config: model.ModelConfig, batch_size: int, seq_len: int) -> StepSpec:
  """Full fine-tuning of every weight on plain [B, seq_len + 1] token rows."""
  return StepSpec(
      init_params=lambda r: model.init_params(model_config, r),
      param_shardings=lambda mesh, _: sharding.param_shardings(model_config, mesh),
      loss_fn=losses.language_model_loss(model_config),
      batch={"tokens": jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32)})


def lora_params(model_config: model.ModelConfig, lora_config: lora_lib.LoraConfig,
                rng: jax.Array) -> dict[str, Any]:
  """{"base", "lora"}: the tree `trainer.make_trainable` builds (for tracing only)."""
  base_rng, lora_rng = jax.random.split(rng)
  return {"base": model.init_params(model_config, base_rng),
          "lora": lora_lib.init_adapters(model_config, lora_config, lora_rng)}


def lora_param_shardings(model_config: model.ModelConfig, lora_config: lora_lib.LoraConfig,
                         mesh: Mesh, abstract: dict[str, Any]) -> dict[str, Any]:
  """The shardings `trainer.make_trainable` gives the base and the adapters."""
  return {"base": sharding.param_shardings(model_config, mesh),
          "lora": sharding.logical_to_shardings(
              lora_lib.adapter_logical_axes(model_config, lora_config), abstract["lora"], mesh)}


def sft_lora_step(model_config: model.ModelConfig, lora_config: lora_lib.LoraConfig,
                  batch_size: int, seq_len: int, unmerged: bool = False,
                  logits_chunk: int = 0) -> StepSpec:
  """The SFT job's LoRA step (`losses.sft_loss_fn`, frozen base) on packed rows: tokens,
  segment ids, positions and a response-only loss mask, [B, seq_len + 1] each."""
  row = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32)
  return StepSpec(
      init_params=lambda r: lora_params(model_config, lora_config, r),
      param_shardings=lambda mesh, a: lora_param_shardings(model_config, lora_config, mesh, a),
      loss_fn=losses.sft_loss_fn(model_config, lora_config, unmerged, logits_chunk),
      batch={"tokens": row, "segment_ids": row, "positions": row, "loss_mask": row},
      frozen=("^base/",))


def compile_step(devices: list[Any], mesh_config: sharding.MeshConfig, spec: StepSpec,
                 optimizer_config: optimizer.OptimizerConfig,
                 compute_dtype: str | None = None):
  """Lowers and compiles `spec`'s train step on `devices` from abstract inputs (nothing is
  allocated); returns (compiled, mesh)."""
  mesh = sharding.make_mesh(mesh_config, devices)
  tx = optimizer.make_optimizer(dataclasses.replace(optimizer_config, frozen=spec.frozen))
  abstract_params = jax.eval_shape(spec.init_params, jax.random.key(0))
  state = train_state.abstract_train_state(spec.init_params, tx, mesh,
                                           spec.param_shardings(mesh, abstract_params))
  batch_sh = sharding.batch_shardings(mesh, spec.batch)
  batch = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       spec.batch, batch_sh)
  step = step_lib.jit_train_step(step_lib.make_train_step(spec.loss_fn, tx, compute_dtype),
                                 train_state.state_shardings_of(state), batch_sh,
                                 sharding.replicated(mesh))
  return step.lower(state, batch).compile(), mesh


def compile_train_step(devices: list[Any], mesh_config: sharding.MeshConfig,
                       model_config: model.ModelConfig, optimizer_config: optimizer.OptimizerConfig,
                       batch_size: int, seq_len: int, compute_dtype: str | None = None):
  """The language-model train step (`lm_step`) compiled on `devices`: (compiled, mesh)."""
  return compile_step(devices, mesh_config, lm_step(model_config, batch_size, seq_len),
                      optimizer_config, compute_dtype)


def step_report(topology: str, mesh_config: sharding.MeshConfig, spec: StepSpec,
                optimizer_config: optimizer.OptimizerConfig,
                compute_dtype: str | None = None) -> AotReport:
  """Compiles `spec` for `topology`; per-chip memory from `compiled.memory_analysis()`."""
  devices = tpu_topology_devices(topology)
  kind = devices[0].device_kind
  hbm = hbm_bytes_of(kind)
  start = time.perf_counter()
  try:
    compiled, mesh = compile_step(devices, mesh_config, spec, optimizer_config, compute_dtype)
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    # XLA refuses to compile what cannot fit in HBM: that is the answer, not a failure.
    shape = dict(zip(sharding.AXES, mesh_config.shape(len(devices))))
    return AotReport(
        topology=topology, device_kind=kind, num_chips=len(devices), mesh=shape,
        argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=0,
        generated_code_bytes=0, peak_bytes=None, hbm_bytes=hbm, fits=False,
        flops_per_step=None, error=str(error).splitlines()[0],
        compile_seconds=time.perf_counter() - start)
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  return AotReport(
      topology=topology, device_kind=kind, num_chips=len(devices), mesh=dict(mesh.shape),
      argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
      alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
      generated_code_bytes=mem.generated_code_size_in_bytes, peak_bytes=peak, hbm_bytes=hbm,
      fits=None if hbm is None else peak <= hbm,
      flops_per_step=metrics.compiled_flops(compiled, len(devices)), compile_seconds=seconds)


def aot_report(topology: str, mesh_config: sharding.MeshConfig,
               model_config: model.ModelConfig, optimizer_config: optimizer.OptimizerConfig,
               batch_size: int, seq_len: int, compute_dtype: str | None = None) -> AotReport:
  """`step_report` for the language-model train step (`lm_step`)."""
  return step_report(topology, mesh_config, lm_step(model_config, batch_size, seq_len),
                     optimizer_config, compute_dtype)
