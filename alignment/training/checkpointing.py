"""Orbax checkpoints of a run: train state, data position and the run's config.

Orbax writes each step into a temporary directory and renames it only once every item is
complete, so a step that a crash (even SIGKILL) interrupted never counts as a checkpoint. A
finalized step whose files are damaged (disk trouble, a hand-edited run directory) fails to
restore; `restore_latest` then moves it aside as `<step>.corrupt` and falls back to the
previous step, loudly, rather than dying or silently starting over. A step whose files are
intact but hold another tree or other shapes (the run's config changed: another LoRA rank)
is not damaged: that raises `CheckpointMismatchError` naming the shapes, and every step stays.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from alignment.training.train_state import TrainState

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  directory: str  # the run's checkpoint directory (local path or gs://...)
  save_every: int = 1000  # steps between periodic saves; the final step is always saved
  max_to_keep: int | None = 3  # newest N kept; None keeps all
  async_save: bool = True  # write in a background thread while training continues
  # Top-level keys of `state.params` left out of checkpoints: frozen weights (a LoRA run's
  # base model) that the job loads anyway, so each checkpoint holds only what trains.
  skip_params: tuple[str, ...] = ()


class CheckpointMismatchError(ValueError):
  """A readable checkpoint whose tree or shapes differ from the state it is restored onto."""


def _leaf_shapes(tree: Any) -> dict[tuple[str, ...], tuple]:
  """{path as names: shape}; orbax's metadata tree and a TrainState give the same names."""
  return {tuple(re.findall(r"\w+", jax.tree_util.keystr(path))): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def structure_mismatch(saved: Any, target: Any, limit: int = 5) -> str | None:
  """What differs between the saved state's metadata tree and the target, or None."""
  old, new = _leaf_shapes(saved), _leaf_shapes(target)
  name = "/".join
  problems = [f"{name(k)}: saved {old[k]} vs now {new[k]}" for k in old
              if k in new and old[k] != new[k]]
  problems += [f"{name(k)}: saved, not in the state now" for k in old if k not in new]
  problems += [f"{name(k)}: in the state now, not saved" for k in new if k not in old]
  if not problems:
    return None
  more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
  return "; ".join(problems[:limit]) + more


@dataclasses.dataclass(frozen=True)
class Restored:
  step: int
  state: TrainState
  data_state: Any  # whatever the data iterator's get_state() returned, or None
  config: dict | None  # the run config saved with the step


def abstract_like(state: Any) -> Any:
  """Shape/dtype/sharding structs of a (concrete or abstract) state: a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with three items per step:
  `state` (sharded arrays), `data` (JSON data-iterator position), `config` (JSON)."""

  def __init__(self, config: CheckpointConfig, run_config: dict | None = None):
    if config.save_every < 1:
      raise ValueError(f"checkpoint.save_every={config.save_every} must be >= 1")
    self.config = config
    # orbax needs an absolute path; a relative local one is taken from the working directory.
    directory = config.directory
    if "://" not in directory:
      directory = os.path.abspath(directory)
    self.directory = epath.Path(directory)
    self._run_config = run_config or {}
    # Which steps to save is decided here (every `save_every`-th step, and forced ones), so
    # orbax's own interval policy is not used.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.max_to_keep,
        enable_async_checkpointing=config.async_save, cleanup_tmp_directories=True, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    """Newest finalized step (in-flight async saves and interrupted ones do not count)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Periodic saves fall on multiples of `save_every`."""
    return step > 0 and step % self.config.save_every == 0

  def save(self, step: int, state: TrainState, data_state: Any = None,
           force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether a save started.

    Device arrays are copied to host before this returns, so the caller may donate or
    overwrite `state` right away while the files are written in the background.
    """
    if not (force or self.should_save(step)) or step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(self._saved_part(state)),
        data=ocp.args.JsonSave({"position": data_state}),
        config=ocp.args.JsonSave(self._run_config))
    return self._manager.save(step, args=args, force=True)

  def _saved_part(self, state: TrainState) -> TrainState:
    if not self.config.skip_params:
      return state
    missing = [k for k in self.config.skip_params if k not in state.params]
    if missing:
      raise ValueError(f"checkpoint.skip_params {missing} are not keys of the state's params "
                       f"({sorted(state.params)})")
    kept = {k: v for k, v in state.params.items() if k not in self.config.skip_params}
    return state.replace(params=kept)

  def restore(self, step: int, abstract_state: TrainState,
              skipped_from: TrainState | None = None) -> Restored:
    """Restores `step` onto the shardings in `abstract_state` (any mesh: orbax reads each
    device's slice of the saved arrays, whatever mesh wrote them).

    Parameters left out by `skip_params` are taken from `skipped_from` (the caller's state).
    """
    if self.config.skip_params and skipped_from is None:
      raise ValueError("this checkpointer skips params "
                       f"{list(self.config.skip_params)}; pass skipped_from= to restore them")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(self._saved_part(abstract_state)),
        data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
    data = restored["data"]
    state = restored["state"]
    if self.config.skip_params:
      state = state.replace(params={**state.params, **{
          k: skipped_from.params[k] for k in self.config.skip_params}})
    return Restored(step=step, state=state,
                    data_state=None if data is None else data.get("position"),
                    config=restored["config"])

  def restore_latest(self, abstract_state: TrainState,
                     skipped_from: TrainState | None = None) -> Restored | None:
    """The newest step that restores cleanly, or None when the run has no checkpoint.

    Raises CheckpointMismatchError (moving nothing) when a step's files are readable but
    describe another state; only steps that fail otherwise are moved aside.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self.restore(step, abstract_state, skipped_from)
      except Exception as error:  # pylint: disable=broad-except
        mismatch = self._mismatch(step, abstract_state)
        if mismatch:
          raise CheckpointMismatchError(
              f"checkpoint step {step} in {self.directory} holds another state than this run "
              f"builds: {mismatch}. Nothing was moved; use another workdir or the config "
              "that wrote it.") from error
        log.error("checkpoint step %d in %s cannot be restored (%s: %s); moving it aside and "
                  "trying the previous one", step, self.directory, type(error).__name__, error)
        self._quarantine(step)
    return None

  def _mismatch(self, step: int, abstract_state: TrainState) -> str | None:
    """The tree/shape difference of a step whose metadata reads, else None (damaged)."""
    try:
      saved = self._manager.item_metadata(step)["state"]
      saved = getattr(saved, "tree", saved)
    except Exception:  # pylint: disable=broad-except
      return None  # Unreadable metadata: the files are damaged.
    if saved is None:
      return None
    return structure_mismatch(saved, self._saved_part(abstract_state))

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      path = self.directory / str(step)
      if path.exists():
        path.rename(self.directory / f"{step}.corrupt")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"quarantine_checkpoint_{step}")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until in-flight async saves are finalized."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
