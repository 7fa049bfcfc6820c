"""Weight-only quantization of a decoder parameter tree (round trip through int8 / int4).

`quantize_params(params, "int8" | "int4")` returns a tree of the same structure and dtype in
which each projection weight has been rounded to its integer grid and scaled back
("fake quantization"): the decoder, the Sampler and the LoRA merge run on it unchanged, and
any change in behaviour is the rounding error alone. Symmetric round-to-nearest, scale =
absmax / 127 (int8) or absmax / 7 (int4), so every element lies within scale / 2 of the
original and quantizing twice changes nothing.

- int8: one scale per output channel (the weight's non-contraction axes).
- int4: one scale per group of 32 consecutive elements along the contraction axis (and per
  output channel). 32 is the block size of the 4-bit GGUF formats (Q4_0, Q4_K sub-blocks) the
  embedded 270M ships in, and divides every contraction size of the Gemma presets; with
  float32 scales it costs 1 extra bit per weight (64 would halve that and raise the error).
- Quantized: attention q/kv/out (`q_einsum`, `kv_einsum`, `attn_vec_einsum`, Gemma 1's
  `qkv_einsum`), MLP `gating_einsum` / `linear`, and the embedding table. The table is tied:
  it is both the input lookup and the output projection (logits = x @ E^T, contraction over
  `embed`), so it is scaled per vocabulary row (int8) or per row and 32-wide `embed` group
  (int4), which serves both uses; it holds 62% of the 270M's weights, so leaving it in float
  would leave "int4" mostly float. Norm scales (and anything else) are left untouched.

The rounding is qwix's (`qwix.quantize` / `qwix.dequantize` on each array, with channelwise
and tiled axes). qwix's model-level PTQ (`quantize_model`) intercepts the einsums of a module
and stores QArray leaves, which the plain float pytree our decoder, Sampler and LoRA merge take
does not carry; the array-level API fits as is. Its default absmax calibration divides by
127.5 / 7.5 (the value -128 / -8 is used), which is not idempotent; the calibration factor
passed below makes the scale absmax / 127 and absmax / 7.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

SCHEMES = ("none", "int8", "int4")
INT4_GROUP = 32
_BITS = {"int8": 8, "int4": 4}
_QMAX = {"int8": 127, "int4": 7}
_QTYPE = {"int8": jnp.int8, "int4": jnp.int4}


@dataclasses.dataclass(frozen=True)
class WeightLayout:
  """Which axes of a weight are contracted with the activations (the rest are output channels)."""

  contraction: tuple[int, ...]  # the int4 groups run along the last of these

# Leaf name -> layout (see alignment/model: shapes in the docstrings of attention.py, layers.py).
LAYOUTS: dict[str, WeightLayout] = {
    "q_einsum": WeightLayout((1,)),  # [N, D, H]
    "kv_einsum": WeightLayout((2,)),  # [2, K, D, H]
    "qkv_einsum": WeightLayout((2,)),  # [3, N, D, H]
    "attn_vec_einsum": WeightLayout((0, 1)),  # [N, H, D]
    "gating_einsum": WeightLayout((1,)),  # [2, D, F]
    "linear": WeightLayout((0,)),  # [F, D]
    "input_embedding": WeightLayout((1,)),  # [V, D]; tied output projection contracts D
}


def _check_scheme(scheme: str) -> None:
  if scheme not in SCHEMES:
    raise ValueError(f"unknown quantization scheme {scheme!r}; known: {', '.join(SCHEMES)}")


ROUND_TRIP_SCHEMES = SCHEMES[1:]  # what an evaluation may round-trip through; '' = none


def check_round_trip(scheme: str, name: str = "config.quantize") -> None:
  """A ValueError for an unknown scheme ('' = none), before the slow model load."""
  if scheme and scheme not in ROUND_TRIP_SCHEMES:
    raise ValueError(f"{name}: unknown scheme {scheme!r}; expected '' (none) or one of "
                     f"{', '.join(ROUND_TRIP_SCHEMES)}")


def _qwix():
  try:
    import qwix  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("weight quantization needs qwix: `pip install qwix`") from e
  return qwix


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _leaf_name(path) -> str:
  last = path[-1]
  return str(getattr(last, "key", getattr(last, "idx", last)))


def _axes(name: str, shape: tuple[int, ...], scheme: str, where: str
          ) -> tuple[tuple[int, ...], dict[int, int]]:
  """(channelwise axes, tiled axes {axis: group size}) of one weight under `scheme`."""
  contraction = LAYOUTS[name].contraction
  if len(shape) <= max(contraction):
    raise ValueError(f"{where}: expected a {name} weight with contraction axes {contraction}, "
                     f"got shape {shape}")
  channels = tuple(a for a in range(len(shape)) if a not in contraction)
  if scheme == "int8":
    return channels, {}
  axis = contraction[-1]
  group = min(INT4_GROUP, shape[axis])
  if shape[axis] % group:
    raise ValueError(f"{where}: int4 groups of {group} along axis {axis} do not divide its "
                     f"size {shape[axis]} (shape {shape})")
  # The other contraction axes (heads of attn_vec_einsum) get a scale each: groups never span
  # two heads.
  return channels + contraction[:-1], {axis: group}


def _quantize_array(qwix, w: jax.Array, scheme: str, channels, tiled):
  # Factor qwix's bound (127.5 / 7.5) over ours (127 / 7): scale = absmax / qmax.
  factor = (_QMAX[scheme] + 0.5) / _QMAX[scheme]
  return qwix.quantize(w.astype(jnp.float32), _QTYPE[scheme], channelwise_axes=channels,
                       tiled_axes=tiled or None, calibration_method=f"absmax,{factor!r}")


def is_quantized_weight(path) -> bool:
  """Whether the leaf at `path` (a jax tree path) is one of the weights this module rounds."""
  return bool(path) and _leaf_name(path) in LAYOUTS


def quantize_params(params: Any, scheme: str) -> Any:
  """`params` with every projection weight round-tripped through `scheme` (see module doc).

  Same tree structure, shapes and dtypes; `"none"` returns `params` itself. Jittable.
  """
  _check_scheme(scheme)
  if scheme == "none":
    return params
  _qwix()  # a clear ImportError before tracing
  # One compiled program per tree: eager, each of qwix's small ops would compile on its own
  # (seconds per weight shape).
  return _quantize_tree(params, scheme)


@jax.jit(static_argnames="scheme")
def _quantize_tree(params: Any, scheme: str) -> Any:
  qwix = _qwix()

  def one(path, w):
    if not is_quantized_weight(path):
      return w
    channels, tiled = _axes(_leaf_name(path), tuple(w.shape), scheme, _path_name(path))
    q = _quantize_array(qwix, w, scheme, channels, tiled)
    return qwix.dequantize(q).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(one, params)


def quantization_scales(w: jax.Array, name: str, scheme: str) -> jax.Array:
  """The scales `quantize_params` uses for weight `name`, broadcastable against `w`."""
  _check_scheme(scheme)
  if scheme == "none":
    raise ValueError("scheme 'none' has no scales")
  channels, tiled = _axes(name, tuple(w.shape), scheme, name)
  q = _quantize_array(_qwix(), w, scheme, channels, tiled)
  scale = q.scale
  for axis, group in tiled.items():  # one scale per group -> one per element
    scale = jnp.repeat(scale, group, axis=axis)
  return jnp.broadcast_to(scale, w.shape)


@dataclasses.dataclass(frozen=True)
class QuantizedSize:
  """Bytes of a parameter tree stored in float vs with its weights in integer form."""

  scheme: str
  float_bytes: int  # every leaf at its own dtype
  quantized_bytes: int  # integer weights (packed, 2 per byte for int4) + float32 scales + rest
  quantized_weights: int  # number of elements stored as integers
  other_params: int  # elements left in float (norms, ...)

  @property
  def ratio(self) -> float:
    return self.quantized_bytes / self.float_bytes


def quantized_size(params: Any, scheme: str) -> QuantizedSize:
  """How many bytes `params` would take with the weights in `scheme`'s integer form.

  Counted from shapes and dtypes alone (arrays or jax.ShapeDtypeStruct; nothing is
  quantized): int8 1 byte, int4 half a byte per weight,
  4 bytes per float32 scale; unquantized leaves at their own dtype.
  """
  _check_scheme(scheme)
  float_bytes = quantized = n_q = n_other = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    shape = tuple(leaf.shape)
    size = math.prod(shape)
    nbytes = size * jnp.dtype(leaf.dtype).itemsize
    float_bytes += nbytes
    if scheme == "none" or not is_quantized_weight(path):
      quantized += nbytes
      n_other += size
      continue
    channels, tiled = _axes(_leaf_name(path), shape, scheme, _path_name(path))
    num_scales = 1
    for a in channels:
      num_scales *= shape[a]
    for axis, group in tiled.items():
      num_scales *= shape[axis] // group
    quantized += (size * _BITS[scheme] + 7) // 8 + 4 * num_scales
    n_q += size
  return QuantizedSize(scheme, float_bytes, quantized, n_q, n_other)
