"""The Python loop that drives a jitted train step: resume, step, log, save, stop.

Metrics are fetched one step late (after the next step is dispatched), so the host never
stalls the device just to read a loss; before each save the just-finished step is checked,
and so are the updated parameters and optimizer state themselves (a finite loss can still
be followed by a NaN update), so a checkpoint never holds a non-finite state. SIGTERM or
SIGINT stops the run at the next step boundary with a checkpoint and a "preempted" summary.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from alignment.training import distributed, metrics as metrics_lib, preemption
from alignment.training.checkpointing import Checkpointer, abstract_like
from alignment.training.train_state import TrainState

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/inf; the run stopped without saving that state."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  num_steps: int  # total train steps of the run (a resumed run continues up to it)
  log_every: int = 10
  output_dir: str | None = None  # TensorBoard events and summary.json; None writes no files
  progress_bar: bool = True


@dataclasses.dataclass(frozen=True)
class Hook:
  """Host-side work every `every` steps (held-out loss, sample answers): `fn(step, state)`.

  It runs after the step's metrics are checked and before that step's checkpoint is saved;
  what it returns is logged (its scalar values) when it is a dict.
  """

  every: int
  fn: Callable[[int, TrainState], Any]


@dataclasses.dataclass(frozen=True)
class TrainResult:
  state: TrainState
  summary: dict[str, Any]


def _finite(value: float) -> bool:
  return math.isfinite(value)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  """Whether every float leaf of `tree` is finite (one device reduction, one bool back)."""
  checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(checks).all() if checks else jnp.array(True)


def train(config: LoopConfig, state: TrainState, train_step: Callable, batches: Iterator,
          checkpointer: Checkpointer | None = None, *, mesh: Mesh,
          learning_rate_fn: Callable[[int], float] | None = None,
          flops_per_step: float | Callable[[Any], float] | None = None,
          tokens_per_step: Callable[[Any], int] = metrics_lib.count_tokens,
          hooks: tuple[Hook, ...] | list[Hook] = (),
          step_of: Callable[[TrainState], int] | None = None,
          place_batch: Callable[[Any, Mesh], Any] = distributed.global_batch) -> TrainResult:
  """Trains `state` up to `config.num_steps` with `train_step(state, batch)`.

  Args:
    state: the initial state. If `checkpointer` holds a newer step it is restored onto the
      same shardings (then `state` is dropped) and `batches.set_state` gets the saved data
      position; a caller that restored already passes the restored state and is left alone.
    train_step: jitted `(state, batch) -> (state, metrics)`; metrics hold "loss" and
      "grad_norm" (see `step.make_train_step`).
    batches: yields this host's rows of each global batch (numpy trees); `get_state()` /
      `set_state()` (JSON-able) make it resumable.
    mesh: the mesh the batches are laid out on.
    learning_rate_fn: step -> learning rate, logged when given.
    flops_per_step: FLOPs of one step (or batch -> FLOPs) for MFU; default: XLA's count of
      the compiled step for each new batch shape.
    hooks: `Hook`s run every N steps (and never on a step whose metrics were not finite).
    step_of: the loop step a state is at (default `state.step`). A step that makes several
      optimizer updates (a PPO iteration) counts loop steps in its own unit: checkpoints,
      logs and hooks are numbered by it.
    place_batch: `(host batch, mesh) -> global batch` before each step (default: the host's
      rows of a global array); a host-side step that takes prompts passes them through.

  Raises:
    NonFiniteLossError: a loss, gradient norm or the updated state became NaN/inf.
    preemption.Preempted: SIGTERM/SIGINT arrived; the state after the step that was running
      is saved (with a checkpointer) and the summary says "preempted".
  """
  for hook in hooks:
    if hook.every < 1:
      raise ValueError(f"hook every={hook.every} must be >= 1")
  step_of = step_of or (lambda s: int(s.step))
  primary = distributed.is_primary()
  resumable = hasattr(batches, "get_state") and hasattr(batches, "set_state")
  if checkpointer is not None:
    latest = checkpointer.latest_step()
    if latest is not None and latest > step_of(state):
      restored = checkpointer.restore_latest(abstract_like(state), skipped_from=state)
      if restored is not None:
        del state
        state = restored.state
        if restored.data_state is not None:
          if not resumable:
            raise ValueError("resuming needs a data iterator with set_state(); got "
                             f"{type(batches).__name__}")
          batches.set_state(restored.data_state)
        log.info("resumed from step %d of %s", restored.step, checkpointer.directory)
  start = step_of(state)
  logger = metrics_lib.MetricsLogger(config.output_dir, config.num_steps, start,
                                     enabled=primary, progress_bar=config.progress_bar)
  peak = metrics_lib.peak_flops_per_device(mesh.devices.flat[0])
  num_devices = mesh.size
  flops_cache: dict[Any, float | None] = {}

  def step_flops(batch) -> tuple[float | None, str | None]:
    if flops_per_step is not None:
      value = flops_per_step(batch) if callable(flops_per_step) else flops_per_step
      return value, "given"
    lower = getattr(train_step, "lower", None)
    if lower is None:  # a host-side step (PPO's iteration): XLA has no single program to count
      return None, None
    key = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(batch))
    if key not in flops_cache:
      flops_cache[key] = metrics_lib.lowered_flops(lower(state, batch))
    return flops_cache[key], "xla_cost_analysis" if flops_cache[key] else None

  history = {"loss": None, "tokens": 0, "steps_timed": 0, "flops_timed": 0.0,
             "time_timed": 0.0}
  window = {"t": None, "tokens": 0, "steps": 0, "flops": 0.0}
  first_step_seconds = None
  last_saved = checkpointer.latest_step() if checkpointer is not None else None
  status = "completed"
  flops_source = None
  t_start = time.perf_counter()

  def finish(step: int, metrics: Any, tokens: int, flops: float | None) -> None:
    """Reads step `step`'s metrics (waits for it), checks them, updates the log window."""
    nonlocal first_step_seconds
    values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    for name in ("loss", "grad_norm"):
      if name in values and not _finite(values[name]):
        raise NonFiniteLossError(
            f"{name} became {values[name]} at step {step}; stopping. The last good checkpoint "
            f"is step {last_saved} in "
            f"{checkpointer.directory if checkpointer is not None else '(no checkpointer)'}")
    history["loss"] = values["loss"]
    logger.advance()
    if window["t"] is None:  # The first step includes compilation: time from its end.
      first_step_seconds = now - t_start
      window.update(t=now, tokens=0, steps=0, flops=0.0, hook_seconds=0.0)
    else:
      window["tokens"] += tokens
      window["steps"] += 1
      window["flops"] += flops or 0.0
    window["last_values"] = values

  def flush_log(step: int) -> None:
    now = time.perf_counter()
    values = dict(window.get("last_values", {}))
    elapsed = now - window["t"] - window.get("hook_seconds", 0.0)
    if window["steps"] and elapsed > 0:
      values["tokens_per_sec"] = window["tokens"] / elapsed
      values["steps_per_sec"] = window["steps"] / elapsed
      values["mfu"] = metrics_lib.mfu(window["flops"] / window["steps"],
                                      elapsed / window["steps"], num_devices, peak)
      history["tokens"] += window["tokens"]
      history["steps_timed"] += window["steps"]
      history["flops_timed"] += window["flops"]
      history["time_timed"] += elapsed
    if learning_rate_fn is not None:
      values["learning_rate"] = learning_rate_fn(step)
    logger.log(step, values)
    window.update(t=now, tokens=0, steps=0, flops=0.0, hook_seconds=0.0)

  def save(step: int) -> None:
    """Saves `state` after `step` (the caller decided it is due), if it is finite."""
    nonlocal last_saved
    if not bool(_all_finite((state.params, state.opt_state))):
      raise NonFiniteLossError(
          f"the parameters or optimizer state became non-finite in step {step} (its loss "
          f"was finite); not saving it. The last good checkpoint is step {last_saved} in "
          f"{checkpointer.directory}")
    data_state = batches.get_state() if resumable else None
    if checkpointer.save(step, state, data_state, force=True):
      last_saved = step

  pending = None
  step = start
  stop = preemption.StopSignals().__enter__()
  try:
    while step < config.num_steps:
      try:
        local_batch = next(batches)
      except StopIteration:
        raise ValueError(f"the data ran out after step {step} of {config.num_steps}") from None
      batch = place_batch(local_batch, mesh)
      flops, source = step_flops(batch)
      flops_source = flops_source or source
      state, step_metrics = train_step(state, batch)
      step += 1
      if pending is not None:
        finish(*pending)
      pending = (step, step_metrics, tokens_per_step(batch), flops)
      save_due = checkpointer is not None and (
          checkpointer.should_save(step) or step == config.num_steps)
      log_due = step % config.log_every == 0 or step == config.num_steps
      due_hooks = [h for h in hooks if step % h.every == 0]
      if save_due or log_due or due_hooks:
        finish(*pending)
        pending = None
      if log_due:
        flush_log(step)
      for hook in due_hooks:
        hook_start = time.perf_counter()
        out = hook.fn(step, state)
        scalars = {k: float(v) for k, v in (out or {}).items()
                   if isinstance(v, (int, float, np.floating)) and k != "step"}
        if scalars:
          logger.log(step, scalars)
        # Hook time is not training time: tokens/s and MFU leave it out.
        window["hook_seconds"] = window.get("hook_seconds", 0.0) + time.perf_counter() - hook_start
      if save_due:
        save(step)
      if stop.received is not None:
        if pending is not None:
          finish(*pending)
          pending = None
        if checkpointer is not None and last_saved != step:
          save(step)
        status = "preempted"
        break
    if pending is not None:
      finish(*pending)
  except NonFiniteLossError as error:
    status = "non_finite_loss"
    logger.message(str(error))
    raise
  except BaseException:
    status = "failed"
    raise
  finally:
    stop.__exit__()
    if checkpointer is not None:
      checkpointer.wait()
    timed = history["time_timed"]
    summary = {
        "status": status,
        "start_step": start,
        "final_step": step,
        "num_steps": config.num_steps,
        "final_loss": history["loss"],
        "wall_seconds": time.perf_counter() - t_start,
        "first_step_seconds": first_step_seconds,
        "tokens_per_sec": history["tokens"] / timed if timed else None,
        "steps_per_sec": history["steps_timed"] / timed if timed else None,
        "flops_per_step": (history["flops_timed"] / history["steps_timed"]
                           if history["flops_timed"] else None),
        "flops_source": flops_source,
        "peak_flops_per_device": peak,
        "device_kind": mesh.devices.flat[0].device_kind,
        "num_devices": num_devices,
        "mesh": dict(mesh.shape),
        "mfu": (metrics_lib.mfu(history["flops_timed"] / history["steps_timed"],
                                timed / history["steps_timed"], num_devices, peak)
                if history["steps_timed"] and history["flops_timed"] else None),
        "last_checkpoint_step": last_saved,
    }
    if stop.received is not None:
      summary["stop_signal"] = signal.Signals(stop.received).name
    logger.write_summary(summary)
    logger.close()
  if status == "preempted":
    raise preemption.Preempted(stop.received, step, last_saved)
  return TrainResult(state=state, summary=summary)
