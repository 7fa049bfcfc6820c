"""Multi-host setup: process-group initialisation and per-host batch assembly.

Every host runs the same program. Each reads only its own rows of every global batch (see
`alignment.data.batching.host_rows`), and `global_batch` stitches the hosts' rows into one
global array laid out on the mesh, without any host ever holding the whole batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from alignment.sharding import batch_shardings


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """`initialize=True` joins the process group (a job's `distributed` section). On Cloud TPU
  the other fields are found automatically and stay unset ("", 0, -1: typed values a
  command line can give); on GPU clusters and elsewhere set them explicitly."""

  initialize: bool = False
  coordinator_address: str = ""  # "host:port" of process 0
  num_processes: int = 0
  process_id: int = -1


def initialize(config: DistributedConfig) -> None:
  """Calls `jax.distributed.initialize` when configured; must run before any jax
  computation, and is a no-op for single-process runs."""
  if not config.initialize:
    return
  jax.distributed.initialize(coordinator_address=config.coordinator_address or None,
                             num_processes=config.num_processes or None,
                             process_id=None if config.process_id < 0 else config.process_id)


def is_primary() -> bool:
  """True on the one process that writes logs, summaries and progress bars."""
  return jax.process_index() == 0


def fetch(tree: Any) -> Any:
  """`tree`'s arrays as host numpy values on every process. An array spread over other
  processes' devices is all-gathered, so every process must call this (a collective)."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)


def process_rows(sharding: NamedSharding, global_batch_size: int) -> slice:
  """The contiguous rows of a [global_batch_size, ...] array this process's devices hold."""
  indices = sharding.addressable_devices_indices_map((global_batch_size,))
  starts = sorted({idx[0].indices(global_batch_size)[0] for idx in indices.values()})
  stops = sorted({idx[0].indices(global_batch_size)[1] for idx in indices.values()})
  rows = slice(starts[0], stops[-1])
  covered = sum(b - a for a, b in zip(starts, stops))
  if covered != rows.stop - rows.start:
    raise ValueError(f"process {jax.process_index()}'s devices hold non-contiguous batch rows "
                     f"{list(zip(starts, stops))}; order the mesh devices by process")
  return rows


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each host's rows (numpy, [B/hosts, ...]) into global sharded arrays.

  Checks that this host's rows are block `process_index` of `process_count`, the layout the
  data pipeline produces; a mismatch would silently permute examples between hosts.
  """
  count, index = jax.process_count(), jax.process_index()

  def one(local, sharding):
    local = np.asarray(local)
    global_shape = (local.shape[0] * count, *local.shape[1:])
    rows = process_rows(sharding, global_shape[0])
    per_host = local.shape[0]
    if (rows.start, rows.stop) != (index * per_host, (index + 1) * per_host):
      raise ValueError(f"process {index} holds batch rows [{rows.start}, {rows.stop}) on the "
                       f"mesh but read rows [{index * per_host}, {(index + 1) * per_host})")
    return jax.make_array_from_process_local_data(sharding, local, global_shape)

  return jax.tree.map(one, local_batch, batch_shardings(mesh, global_shapes(local_batch)))


def global_shapes(local_batch: Any) -> Any:
  """Shape/dtype structs of the global batch whose per-process rows are `local_batch`
  (every process holds the same number of rows): what batch shardings are built from."""
  count = jax.process_count()
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((np.shape(x)[0] * count, *np.shape(x)[1:]),
                                     x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype),
      local_batch)
