"""A device mesh with named axes (data, fsdp, tensor) built from a config.

Axis types are `AxisType.Auto` on purpose. `jax.make_mesh` now defaults to `Explicit` axes,
under which every array's sharding is part of its type and each op must resolve how its
output is laid out; the linen model here carries no such annotations. With `Auto` axes the
shardings we give `jax.jit` (in/out shardings) are the contract and XLA's SPMD partitioner
propagates layouts through the step, which is the pragmatic, well-trodden path (MaxText does
the same).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Parallelism degrees. One of them may be -1: it takes all devices the others leave."""

  data: int = 1
  fsdp: int = -1
  tensor: int = 1

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes for `num_devices` devices, with -1 resolved."""
    sizes = [self.data, self.fsdp, self.tensor]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1 or any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh {dict(zip(AXES, sizes))}: sizes must be positive, with at most "
                       "one -1 (meaning 'all remaining devices')")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
      if num_devices % known:
        raise ValueError(f"mesh {dict(zip(AXES, sizes))}: {num_devices} devices are not "
                         f"divisible by the fixed axes' product {known}")
      sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                       f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = config.shape(len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
