"""Parameters as slice recipes, placed onto a mesh one device slice at a time.

A 7B/27B model does not fit a TPU VM host's memory as one float32 copy, so a sharded load
never builds one: each parameter is a `Leaf` (its shape and a function that reads any box of
it from disk, converted to float32), and `place` asks each leaf only for the boxes this
process's devices hold (`sharding.addressable_devices_indices_map`), reads each distinct box
once, sends it to the devices that hold it and drops it before reading the next. The host
never holds more than one box at a time (plus the file's pages the OS maps in).

The layout helpers (`transposed`, `heads_in`, `heads_out`, `stacked`) map a box of our tree
onto the box of the stored torch-layout [out, in] tensor it comes from, so Hugging Face and
GGUF checkpoints share them. A box along a split heads axis reads whole heads (head_dim is
never split by the rules table, so nothing extra is read in practice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import numpy as np

Box = tuple[slice, ...]  # one step-1 slice per axis, start and stop given


class TensorStore(Protocol):
  """Stored tensors read by box: `read(name, box)` returns that box as float32 numpy."""

  def read(self, name: str, box: Box) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One parameter as a recipe: its shape and `read(box)` -> that box, float32."""

  shape: tuple[int, ...]
  read: Callable[[Box], np.ndarray]


def full_box(shape: tuple[int, ...]) -> Box:
  return tuple(slice(0, n) for n in shape)


def normalise(index: tuple, shape: tuple[int, ...]) -> Box:
  """A device index (slices that may hold None) as explicit step-1 slices."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  box = []
  for s, n in zip(index, shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"slice {s} of a dimension of {n}: only step 1 is supported")
    box.append(slice(start, stop))
  return tuple(box)


def _len(s: slice) -> int:
  return s.stop - s.start


def direct(store: TensorStore, name: str, shape: tuple[int, ...], minus: float = 0.0) -> Leaf:
  """A stored tensor as it is (less `minus`: GGUF keeps RMSNorm weights as 1 + w)."""
  def read(box: Box) -> np.ndarray:
    x = store.read(name, box)
    return x - np.float32(minus) if minus else x
  return Leaf(tuple(shape), read)


def transposed(store: TensorStore, name: str, stored: tuple[int, int]) -> Leaf:
  """[a, b] stored -> [b, a] (torch Linear [out, in] -> our [in, out])."""
  return Leaf((stored[1], stored[0]), lambda box: store.read(name, (box[1], box[0])).T)


def heads_in(store: TensorStore, name: str, count: int, head_dim: int, embed: int) -> Leaf:
  """[C*H, D] stored (q/k/v projections) -> [C, D, H]."""
  def read(box: Box) -> np.ndarray:
    c, d, h = box
    rows = slice(c.start * head_dim, c.stop * head_dim)
    x = store.read(name, (rows, d)).reshape(_len(c), head_dim, _len(d))
    return x.transpose(0, 2, 1)[:, :, h]
  return Leaf((count, embed, head_dim), read)


def heads_out(store: TensorStore, name: str, count: int, head_dim: int, embed: int) -> Leaf:
  """[D, N*H] stored (the output projection) -> [N, H, D]."""
  def read(box: Box) -> np.ndarray:
    n, h, d = box
    cols = slice(n.start * head_dim, n.stop * head_dim)
    x = store.read(name, (d, cols)).T.reshape(_len(n), head_dim, _len(d))
    return x[:, h, :]
  return Leaf((count, head_dim, embed), read)


def stacked(parts: list[Leaf]) -> Leaf:
  """Leaves of one shape stacked on a new leading axis (kv_einsum, gating_einsum)."""
  inner = parts[0].shape
  if any(p.shape != inner for p in parts):
    raise ValueError(f"cannot stack leaves of shapes {[p.shape for p in parts]}")
  def read(box: Box) -> np.ndarray:
    return np.stack([parts[j].read(box[1:]) for j in range(box[0].start, box[0].stop)])
  return Leaf((len(parts), *inner), read)


def shapes(leaves: Any) -> Any:
  """The tree of `jax.ShapeDtypeStruct`s (float32) of a tree of leaves."""
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, np.float32), leaves)


def boxes_to_read(shape: tuple[int, ...], indices: Mapping[Any, tuple]
                  ) -> list[tuple[Box, list[Any]]]:
  """Distinct boxes of a device -> index map (`addressable_devices_indices_map`), each with
  the devices that hold it: a replicated box is read once per process, not once per device."""
  boxes: dict[tuple, tuple[Box, list[Any]]] = {}
  for device, index in indices.items():
    box = normalise(index, shape)
    boxes.setdefault(tuple((s.start, s.stop) for s in box), (box, []))[1].append(device)
  return list(boxes.values())


def _read(leaf: Leaf, box: Box, source: str) -> np.ndarray:
  x = np.ascontiguousarray(leaf.read(box), dtype=np.float32)
  want = tuple(_len(s) for s in box)
  if x.shape != want:  # a layout bug, not bad input; say which leaf
    raise AssertionError(f"{source}: box {box} read as shape {x.shape}, expected {want}")
  return x


def place_leaf(leaf: Leaf, sharding: jax.sharding.Sharding, source: str = "leaf") -> jax.Array:
  """One global array from the boxes this process's devices hold, read one box at a time."""
  shape = leaf.shape
  arrays = []
  for box, devices in boxes_to_read(shape, sharding.addressable_devices_indices_map(shape)):
    host = _read(leaf, box, source)
    arrays.extend(jax.device_put([host] * len(devices), devices))
    del host
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def place(leaves: Any, shardings: Any) -> Any:
  """A tree of global float32 arrays on `shardings` from a matching tree of leaves."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(leaves)
  targets = treedef.flatten_up_to(shardings)
  out = []
  for (path, leaf), sharding in zip(flat, targets):
    out.append(place_leaf(leaf, sharding, jax.tree_util.keystr(path)))
  return jax.tree.unflatten(treedef, out)
