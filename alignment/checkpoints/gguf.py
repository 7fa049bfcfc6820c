"""Loads Gemma 3 weights and vocabulary from a GGUF file (the llama.cpp format).

`gguf.GGUFReader` builds a numpy view for every metadata item, which takes ~10-20 s on a
262k-entry vocabulary. This reader walks the header once with `struct` over an `mmap`, keeps
tensor bytes memory-mapped, and leaves dequantisation to `gguf.quants.dequantize`.

Layout facts this module relies on (GGUF spec v2/v3):
  header   = magic "GGUF", uint32 version, uint64 tensor_count, uint64 kv_count
  kv       = string key, uint32 value type, value (arrays: uint32 elem type, uint64 count, items)
  tensor   = string name, uint32 n_dims, uint64 dims[n_dims] (fastest first), uint32 type,
             uint64 offset (relative to the data section, which starts at the next multiple of
             `general.alignment` after the tensor infos)
llama.cpp's Gemma converter stores every RMSNorm weight as (1 + w); our RMSNorm adds the 1.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import pathlib
import struct
from collections.abc import Callable
from typing import Any

import gguf
import jax
import jax.numpy as jnp
import numpy as np

from alignment.checkpoints import slices
from alignment.checkpoints.validate import validate_params
from alignment.model.config import ModelConfig, get_config

PathLike = str | os.PathLike

_VT = gguf.GGUFValueType
# Fixed-size metadata value types: struct format and numpy dtype (little-endian files only).
_SCALARS: dict[_VT, tuple[str, np.dtype]] = {
    _VT.UINT8: ("<B", np.dtype("<u1")), _VT.INT8: ("<b", np.dtype("<i1")),
    _VT.UINT16: ("<H", np.dtype("<u2")), _VT.INT16: ("<h", np.dtype("<i2")),
    _VT.UINT32: ("<I", np.dtype("<u4")), _VT.INT32: ("<i", np.dtype("<i4")),
    _VT.UINT64: ("<Q", np.dtype("<u8")), _VT.INT64: ("<q", np.dtype("<i8")),
    _VT.FLOAT32: ("<f", np.dtype("<f4")), _VT.FLOAT64: ("<d", np.dtype("<f8")),
    _VT.BOOL: ("<?", np.dtype("?")),
}


# Values dequantised per `dequantize` call in `GGUFFile.read` (4 Mi: 16 MiB as float32).
_CHUNK_VALUES = 4 * 2 ** 20


class GGUFError(ValueError):
  """A GGUF file is malformed or does not describe a model we can load."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  shape: tuple[int, ...]  # numpy order (slowest axis first): the GGUF dims reversed
  qtype: gguf.GGMLQuantizationType
  offset: int  # absolute byte offset in the file
  nbytes: int


class _Cursor:
  """Sequential little-endian reads over the mapped file, with bounds checks that name it."""

  def __init__(self, buf: mmap.mmap, path: pathlib.Path):
    self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

  def _need(self, n: int, what: str) -> None:
    if n < 0 or self.pos + n > self.size:
      raise GGUFError(f"{self.path}: truncated or corrupt while reading {what} at byte "
                      f"{self.pos} (needs {n} bytes; file has {self.size})")

  def scalar(self, fmt: str, what: str):
    n = struct.calcsize(fmt)
    self._need(n, what)
    (value,) = struct.unpack_from(fmt, self.buf, self.pos)
    self.pos += n
    return value

  def string(self, what: str) -> str:
    n = self.scalar("<Q", what)
    self._need(n, what)
    raw = self.buf[self.pos:self.pos + n]
    self.pos += n
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise GGUFError(f"{self.path}: {what} is not valid UTF-8 ({e})") from None

  def value_type(self, what: str) -> _VT:
    code = self.scalar("<I", what)
    try:
      return _VT(code)
    except ValueError:
      raise GGUFError(f"{self.path}: unknown value type {code} for {what}") from None

  def value(self, vtype: _VT, what: str) -> Any:
    if vtype == _VT.STRING:
      return self.string(what)
    if vtype == _VT.ARRAY:
      etype = self.value_type(f"{what} element type")
      count = self.scalar("<Q", f"{what} length")
      if etype in _SCALARS:
        dtype = _SCALARS[etype][1]
        self._need(count * dtype.itemsize, what)
        arr = np.frombuffer(self.buf, dtype, count, self.pos).copy()
        self.pos += count * dtype.itemsize
        return arr
      return [self.value(etype, f"{what}[{i}]") for i in range(count)]
    return self.scalar(_SCALARS[vtype][0], what)


@dataclasses.dataclass
class GGUFFile:
  """Parsed header of a GGUF file; tensor bytes stay memory-mapped until asked for."""

  path: pathlib.Path
  version: int
  metadata: dict[str, Any]
  tensors: dict[str, TensorInfo]
  header_bytes: int  # bytes before the data section (metadata + tensor infos)
  _buf: mmap.mmap

  def raw(self, name: str) -> np.ndarray:
    """The stored bytes of one tensor as uint8 [rows, bytes_per_row] (a view, no copy)."""
    info = self._info(name)
    rows = int(np.prod(info.shape[:-1], dtype=np.int64))
    return np.frombuffer(self._buf, np.uint8, info.nbytes, info.offset).reshape(rows, -1)

  def tensor(self, name: str) -> np.ndarray:
    """One tensor dequantised to float32, in numpy axis order (an owned array, not a view)."""
    info = self._info(name)
    raw = self.raw(name)
    out = gguf.quants.dequantize(raw, info.qtype).reshape(info.shape)
    return out.copy() if np.shares_memory(out, raw) else out

  def read(self, name: str, box: tuple[slice, ...]) -> np.ndarray:
    """A box of one tensor (numpy axis order) as float32, dequantising only what it covers:
    the rows of the box and, along the last (quantised) axis, the whole blocks that overlap
    its columns (32 or 256 values per block, `GGML_QUANT_SIZES`); the block overhang is cut
    off after dequantising. Bytes outside those blocks are never touched. Rows go through
    `dequantize` in chunks of about `_CHUNK_VALUES`, so its float temporaries stay small
    beside the box itself (the 270M embedding's box is 262144 rows)."""
    info = self._info(name)
    block, type_size = gguf.GGML_QUANT_SIZES[info.qtype]
    box = tuple(box)
    cols = box[-1]
    first, last = cols.start // block, -(-cols.stop // block)
    raw = self.raw(name)  # [rows, bytes per row]: the leading axes flattened
    lead = info.shape[:-1]
    rows = np.arange(int(np.prod(lead, dtype=np.int64))).reshape(lead)[box[:-1]].reshape(-1)
    out = np.empty((rows.size, cols.stop - cols.start), np.float32)
    step = max(1, _CHUNK_VALUES // ((last - first) * block))
    keep = slice(cols.start - first * block, cols.stop - first * block)
    for i in range(0, rows.size, step):
      part = raw[rows[i:i + step], first * type_size:last * type_size]  # a copy (fancy index)
      out[i:i + step] = gguf.quants.dequantize(part, info.qtype)[:, keep]
    return out.reshape(*(s.stop - s.start for s in box))

  def _info(self, name: str) -> TensorInfo:
    if name not in self.tensors:
      raise GGUFError(f"{self.path}: no tensor named {name!r}")
    return self.tensors[name]


def read_gguf(path: PathLike) -> GGUFFile:
  """Parses the header, metadata and tensor directory of a GGUF file (no tensor data read)."""
  path = pathlib.Path(path)
  with open(path, "rb") as f:
    if os.fstat(f.fileno()).st_size == 0:
      raise GGUFError(f"{path}: empty file, not a GGUF model")
    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
  cur = _Cursor(buf, path)
  magic = buf[:4]
  if magic != b"GGUF":
    raise GGUFError(f"{path}: not a GGUF file (magic bytes {magic!r}, expected b'GGUF')")
  cur.pos = 4
  version = cur.scalar("<I", "version")
  if version not in (2, 3):
    raise GGUFError(f"{path}: unsupported GGUF version {version} (this reader handles 2 and 3)")
  tensor_count = cur.scalar("<Q", "tensor count")
  kv_count = cur.scalar("<Q", "metadata count")

  metadata: dict[str, Any] = {}
  for i in range(kv_count):
    key = cur.string(f"metadata key #{i}")
    metadata[key] = cur.value(cur.value_type(f"type of {key}"), key)

  infos = []
  for i in range(tensor_count):
    name = cur.string(f"tensor name #{i}")
    n_dims = cur.scalar("<I", f"rank of {name}")
    dims = [cur.scalar("<Q", f"shape of {name}") for _ in range(n_dims)]
    code = cur.scalar("<I", f"type of {name}")
    try:
      qtype = gguf.GGMLQuantizationType(code)
    except ValueError:
      raise GGUFError(f"{path}: tensor {name} has unknown type {code}") from None
    infos.append((name, tuple(reversed(dims)), qtype, cur.scalar("<Q", f"offset of {name}")))

  alignment = int(metadata.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
  data_start = -(-cur.pos // alignment) * alignment
  tensors = {}
  for name, shape, qtype, rel in infos:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    if shape and shape[-1] % block:
      raise GGUFError(f"{path}: tensor {name} row of {shape[-1]} is not a multiple of the "
                      f"{qtype.name} block size {block}")
    info = TensorInfo(name, shape, qtype, data_start + rel, n // block * type_size)
    if info.offset + info.nbytes > len(buf):
      raise GGUFError(f"{path}: truncated; tensor {name} needs bytes {info.offset}.."
                      f"{info.offset + info.nbytes} but the file has {len(buf)}")
    tensors[name] = info
  return GGUFFile(path, version, metadata, tensors, data_start, buf)


def read_gguf_vocab(path: PathLike | GGUFFile) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(pieces, scores float32, token types int32) of the file's SentencePiece-style vocabulary.

  Token types use SentencePiece's numbering (1 normal, 2 unknown, 3 control, 4 user-defined,
  5 unused, 6 byte), as llama.cpp's converter copies them.
  """
  file = path if isinstance(path, GGUFFile) else read_gguf(path)
  meta = file.metadata
  for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
    if key not in meta:
      raise GGUFError(f"{file.path}: metadata has no {key}; cannot build a tokenizer")
  tokens = list(meta["tokenizer.ggml.tokens"])
  scores = np.asarray(meta["tokenizer.ggml.scores"], np.float32)
  types = np.asarray(meta["tokenizer.ggml.token_type"], np.int32)
  if not len(tokens) == len(scores) == len(types):
    raise GGUFError(f"{file.path}: vocabulary arrays disagree in length (tokens {len(tokens)}, "
                    f"scores {len(scores)}, token_type {len(types)})")
  return tokens, scores, types


# Gemma 3 facts llama.cpp hard-codes instead of storing: five local layers per global one,
# a 10k RoPE base on local layers, and queries scaled by head_dim ** -0.5 (every size but 27B,
# which uses embed_dim / num_heads; `check_config` catches that case).
_GEMMA3_PATTERN = ("local",) * 5 + ("global",)
_GEMMA3_LOCAL_ROPE_BASE = 10_000.0


def config_from_gguf(file: GGUFFile) -> ModelConfig:
  """The ModelConfig a Gemma 3 GGUF file describes, from its metadata and embedding shape."""
  meta = file.metadata
  arch = meta.get("general.architecture")
  if arch != "gemma3":
    raise GGUFError(f"{file.path}: general.architecture is {arch!r}; only 'gemma3' is supported")

  def field(key: str, default=None):
    full = f"{arch}.{key}"
    if full not in meta:
      if default is None:
        raise GGUFError(f"{file.path}: metadata field {full} is missing")
      return default
    return meta[full]

  head_dim = int(field("attention.key_length"))
  if int(field("attention.value_length", head_dim)) != head_dim:
    raise GGUFError(f"{file.path}: attention.value_length differs from key_length {head_dim}")
  embedding = file._info("token_embd.weight")
  eps = float(np.float32(field("attention.layer_norm_rms_epsilon")))
  return ModelConfig(
      num_layers=int(field("block_count")),
      embed_dim=int(field("embedding_length")),
      hidden_dim=int(field("feed_forward_length")),
      num_heads=int(field("attention.head_count")),
      num_kv_heads=int(field("attention.head_count_kv")),
      head_dim=head_dim,
      vocab_size=embedding.shape[0],
      query_pre_attn_scalar=head_dim,
      attention_pattern=_GEMMA3_PATTERN,
      sliding_window_size=int(field("attention.sliding_window")),
      use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
      rope_base_global=float(field("rope.freq_base")),
      rope_base_local=_GEMMA3_LOCAL_ROPE_BASE,
      rope_scale_global=float(field("rope.scaling.factor", 1.0)),
      # Stored as float32; keep the shortest decimal so 1e-6 compares equal to the preset.
      norm_eps=float(f"{eps:.7g}"),
  )


def check_config(found: ModelConfig, expected: ModelConfig, source: str,
                 expected_name: str) -> None:
  """Raises GGUFError listing every hyper-parameter where `found` differs from `expected`."""
  diffs = [f"{f.name}: file has {getattr(found, f.name)!r}, {expected_name} has "
           f"{getattr(expected, f.name)!r}"
           for f in dataclasses.fields(ModelConfig)
           if getattr(found, f.name) != getattr(expected, f.name)]
  if diffs:
    raise GGUFError(f"{source}: hyper-parameters do not match preset {expected_name!r}:\n  "
                    + "\n  ".join(diffs))


def _params_from_gguf(file: GGUFFile, cfg: ModelConfig) -> dict[str, Any]:
  """Maps GGUF tensors (torch Linear layout [out, in], norms as 1+w) onto our parameter tree."""
  n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim

  def get(name: str) -> np.ndarray:
    return file.tensor(name)

  def norm(name: str) -> np.ndarray:
    return get(name) - np.float32(1.0)

  params: dict[str, Any] = {
      "embedder": {"input_embedding": get("token_embd.weight")},
      "final_norm": {"scale": norm("output_norm.weight")},
  }
  for i in range(cfg.num_layers):
    blk = f"blk.{i}."
    wq = get(blk + "attn_q.weight").reshape(n, h, d).transpose(0, 2, 1)        # [N, D, H]
    wk = get(blk + "attn_k.weight").reshape(k, h, d).transpose(0, 2, 1)        # [K, D, H]
    wv = get(blk + "attn_v.weight").reshape(k, h, d).transpose(0, 2, 1)
    wo = get(blk + "attn_output.weight").reshape(d, n, h).transpose(1, 2, 0)   # [N, H, D]
    gate = get(blk + "ffn_gate.weight").T                                       # [D, F]
    up = get(blk + "ffn_up.weight").T
    params[f"layer_{i}"] = {
        "pre_attention_norm": {"scale": norm(blk + "attn_norm.weight")},
        "post_attention_norm": {"scale": norm(blk + "post_attention_norm.weight")},
        "pre_ffw_norm": {"scale": norm(blk + "ffn_norm.weight")},
        "post_ffw_norm": {"scale": norm(blk + "post_ffw_norm.weight")},
        "attn": {
            "q_einsum": wq,
            "kv_einsum": np.stack([wk, wv]),
            "attn_vec_einsum": wo,
            "_query_norm": {"scale": norm(blk + "attn_q_norm.weight")},
            "_key_norm": {"scale": norm(blk + "attn_k_norm.weight")},
        },
        "mlp": {
            "gating_einsum": np.stack([gate, up]),
            "linear": get(blk + "ffn_down.weight").T,                           # [F, D]
        },
    }
  return params


def gguf_leaves(store: slices.TensorStore, cfg: ModelConfig) -> dict[str, Any]:
  """Our parameter tree as `slices.Leaf`s over a GGUF file's tensors (the box-wise twin of
  `_params_from_gguf`; `store` is the `GGUFFile` or a wrapper of it)."""
  n, k, h, d, f = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim,
                   cfg.hidden_dim)
  norm = lambda name, size: slices.direct(store, name, (size,), minus=1.0)
  params: dict[str, Any] = {
      "embedder": {"input_embedding": slices.direct(store, "token_embd.weight",
                                                    (cfg.vocab_size, d))},
      "final_norm": {"scale": norm("output_norm.weight", d)},
  }
  for i in range(cfg.num_layers):
    blk = f"blk.{i}."
    params[f"layer_{i}"] = {
        "pre_attention_norm": {"scale": norm(blk + "attn_norm.weight", d)},
        "post_attention_norm": {"scale": norm(blk + "post_attention_norm.weight", d)},
        "pre_ffw_norm": {"scale": norm(blk + "ffn_norm.weight", d)},
        "post_ffw_norm": {"scale": norm(blk + "post_ffw_norm.weight", d)},
        "attn": {
            "q_einsum": slices.heads_in(store, blk + "attn_q.weight", n, h, d),
            "kv_einsum": slices.stacked([slices.heads_in(store, blk + f"attn_{p}.weight",
                                                         k, h, d) for p in "kv"]),
            "attn_vec_einsum": slices.heads_out(store, blk + "attn_output.weight", n, h, d),
            "_query_norm": {"scale": norm(blk + "attn_q_norm.weight", h)},
            "_key_norm": {"scale": norm(blk + "attn_k_norm.weight", h)},
        },
        "mlp": {
            "gating_einsum": slices.stacked([slices.transposed(store, blk + f"ffn_{p}.weight",
                                                               (f, d)) for p in ("gate", "up")]),
            "linear": slices.transposed(store, blk + "ffn_down.weight", (d, f)),
        },
    }
  return params


def _gguf_config(file: GGUFFile, expected: str | None) -> ModelConfig:
  cfg = config_from_gguf(file)
  if expected is not None:
    check_config(cfg, get_config(expected), str(file.path), expected)
    cfg = get_config(expected)
  return cfg


def _check_stored_shapes(file: GGUFFile, leaves: dict[str, Any], cfg: ModelConfig) -> None:
  """Every tensor the leaves read exists with the shape the config implies (the whole load
  finds a mismatch while reshaping; the sharded one must find it before reading)."""
  want = {"token_embd.weight": (cfg.vocab_size, cfg.embed_dim),
          "output_norm.weight": (cfg.embed_dim,)}
  n, k, h, d, f = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim,
                   cfg.hidden_dim)
  for i in range(cfg.num_layers):
    blk = f"blk.{i}."
    want.update({blk + "attn_q.weight": (n * h, d), blk + "attn_k.weight": (k * h, d),
                 blk + "attn_v.weight": (k * h, d), blk + "attn_output.weight": (d, n * h),
                 blk + "ffn_gate.weight": (f, d), blk + "ffn_up.weight": (f, d),
                 blk + "ffn_down.weight": (d, f), blk + "attn_q_norm.weight": (h,),
                 blk + "attn_k_norm.weight": (h,)})
    for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
      want[blk + norm + ".weight"] = (d,)
  for name, shape in want.items():
    found = file._info(name).shape
    if found != shape:
      raise GGUFError(f"{file.path}: tensor {name} has shape {found}, the config implies "
                      f"{shape}")


def load_gguf_sharded(path: PathLike, shardings_of: Callable[[ModelConfig], Any],
                      expected: str | None = "gemma3_270m"
                      ) -> tuple[ModelConfig, dict[str, Any]]:
  """`load_gguf` straight into shards: `shardings_of(cfg)` gives the target NamedShardings;
  each device box is dequantised from the mapped file alone (see `GGUFFile.read`), float32."""
  file = read_gguf(path)
  cfg = _gguf_config(file, expected)
  leaves = gguf_leaves(file, cfg)
  _check_stored_shapes(file, leaves, cfg)
  validate_params(slices.shapes(leaves), cfg, source=str(file.path))
  return cfg, slices.place(leaves, shardings_of(cfg))


def load_gguf(path: PathLike, dtype: str = "float32",
              expected: str | None = "gemma3_270m") -> tuple[ModelConfig, dict[str, Any]]:
  """Loads a Gemma 3 GGUF checkpoint as (config, parameter tree of jax arrays in `dtype`).

  The config is rebuilt from the file's metadata and must equal the preset named `expected`
  (pass None to accept whatever the file describes).
  """
  file = read_gguf(path)
  cfg = _gguf_config(file, expected)
  try:
    params = _params_from_gguf(file, cfg)
  except GGUFError:
    raise
  except (KeyError, ValueError) as e:
    raise GGUFError(f"{file.path}: tensor does not fit the config: {e}") from e
  validate_params(params, cfg, source=str(file.path))
  return cfg, jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
