"""LoRA (Hu et al., 2021) as a wrapper around the decoder, never a fork or subclass of it.

Two equivalent ways to run the decoder with adapters:
  unmerged (training): `lora_forward(cfg, base, adapters, lcfg, ...)`, i.e.
    `model.forward(..., lora=adapter_paths(adapters, lcfg))`: every targeted projection
    computes `x W + alpha / rank * (x A) B`. The frozen base gets no weight gradient, so the
    backward pass differentiates only the rank-r matmuls (merging makes it compute the
    full-size dL/dW of every targeted weight, as costly as full fine-tuning).
  merged (export, sampling): `merge(base, adapters, lcfg)` adds `alpha / rank * A @ B` to the
    weights once; the plain decoder then runs at base speed (decoding is bandwidth-bound, so
    no extra adapter reads per token).
Either way the optimizer keeps state for the adapters alone, and the frozen reference policy
is the base tree with adapters off.

Dropout (`LoraConfig.dropout`, the same rate for both paths): unmerged, the standard
per-token dropout of each adapter's input (as in the LoRA paper and peft); merged, weights
cannot see tokens, so `merge` drops input features of each adapter (rows of A) with one mask
per step shared by the whole batch. Both are identity at evaluation (no rng given).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import zipfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from alignment import model as model_lib
from alignment.model.config import ModelConfig
from alignment.model.low_rank import LowRank
from alignment.files import atomic
from alignment import schema

Params = Any


@dataclasses.dataclass(frozen=True)
class _Target:
  """Where a projection lives in the tree and how its low-rank update is laid out."""

  module: str  # "attn" or "mlp"
  weight: str  # parameter name inside the module
  index: int | None  # slice of a stacked weight (kv_einsum, gating_einsum), or None
  a_axes: tuple[str | None, ...]  # logical axes of A's input dims (+ rank)
  b_axes: tuple[str | None, ...]  # logical axes of B (rank + output dims)
  einsum: str  # A, B -> delta weight


TARGETS: dict[str, _Target] = {
    "q": _Target("attn", "q_einsum", None, ("embed", None), (None, "heads", "head_dim"),
                 "dr,rnh->ndh"),
    "k": _Target("attn", "kv_einsum", 0, ("embed", None), (None, "kv_heads", "head_dim"),
                 "dr,rkh->kdh"),
    "v": _Target("attn", "kv_einsum", 1, ("embed", None), (None, "kv_heads", "head_dim"),
                 "dr,rkh->kdh"),
    "o": _Target("attn", "attn_vec_einsum", None, ("heads", "head_dim", None),
                 (None, "embed"), "nhr,rd->nhd"),
    "gate": _Target("mlp", "gating_einsum", 0, ("embed", None), (None, "mlp"), "dr,rf->df"),
    "up": _Target("mlp", "gating_einsum", 1, ("embed", None), (None, "mlp"), "dr,rf->df"),
    "down": _Target("mlp", "linear", None, ("mlp", None), (None, "embed"), "fr,rd->fd"),
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

  def __post_init__(self):
    object.__setattr__(self, "targets", schema.names(self.targets))  # "q,v" or ("q", "v")
    unknown = set(self.targets) - set(TARGETS)
    if unknown:
      raise ValueError(f"unknown LoRA target(s) {sorted(unknown)}; known: {sorted(TARGETS)}")
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _shapes(model: ModelConfig, target: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  d, f, n, k, h = (model.embed_dim, model.hidden_dim, model.num_heads, model.num_kv_heads,
                   model.head_dim)
  return {
      "q": ((d, rank), (rank, n, h)),
      "k": ((d, rank), (rank, k, h)),
      "v": ((d, rank), (rank, k, h)),
      "o": ((n, h, rank), (rank, d)),
      "gate": ((d, rank), (rank, f)),
      "up": ((d, rank), (rank, f)),
      "down": ((f, rank), (rank, d)),
  }[target]


def init_adapters(model: ModelConfig, lora: LoraConfig, rng: jax.Array,
                  dtype: str = "float32") -> Params:
  """A ~ N(0, 1/fan_in), B = 0, so the merged model starts equal to the base."""
  adapters = {}
  for i in range(model.num_layers):
    layer = {}
    for name in lora.targets:
      a_shape, b_shape = _shapes(model, name, lora.rank)
      rng, key = jax.random.split(rng)
      fan_in = int(np.prod(a_shape[:-1]))
      layer[name] = {
          "a": jax.random.normal(key, a_shape, dtype) / np.sqrt(fan_in),
          "b": jnp.zeros(b_shape, dtype),
      }
    adapters[f"layer_{i}"] = layer
  return adapters


def adapter_logical_axes(model: ModelConfig, lora: LoraConfig) -> Params:
  """Logical axis names of the adapter tree (same rule table as the base parameters)."""
  return {
      f"layer_{i}": {name: {"a": P(*TARGETS[name].a_axes), "b": P(*TARGETS[name].b_axes)}
                     for name in lora.targets}
      for i in range(model.num_layers)
  }


def merge(base: Params, adapters: Params, lora: LoraConfig,
          dropout_rng: jax.Array | None = None) -> Params:
  """Base parameters with every adapter's low-rank update added (a new tree; base untouched).

  Pass `dropout_rng` during training to apply adapter dropout; omit it for evaluation.
  """
  merged = jax.tree.map(lambda x: x, base)  # shallow structural copy
  for layer_name, layer_adapters in adapters.items():
    for name, ab in layer_adapters.items():
      target = TARGETS[name]
      a = ab["a"]
      if dropout_rng is not None and lora.dropout > 0:
        dropout_rng, key = jax.random.split(dropout_rng)
        keep = jax.random.bernoulli(key, 1.0 - lora.dropout, a.shape[:-1] + (1,))
        a = jnp.where(keep, a / (1.0 - lora.dropout), 0.0)
      module = merged[layer_name][target.module]
      weight = module[target.weight]
      delta = (lora.scale * jnp.einsum(target.einsum, a, ab["b"])).astype(weight.dtype)
      if target.index is None:
        module[target.weight] = weight + delta
      else:
        module[target.weight] = weight.at[target.index].add(delta)
  return merged


def decoder_params(params: Params, lora: LoraConfig | None,
                   dropout_rng: jax.Array | None = None) -> Params:
  """The decoder a trainable tree {"base", "lora"} runs as: the frozen base with its adapters
  merged in (no gradient reaches the base), or the base itself when `lora` is None (full
  fine-tuning, where the base is what trains)."""
  if lora is None:
    return params["base"]
  return merge(jax.lax.stop_gradient(params["base"]), params["lora"], lora, dropout_rng)


def adapter_paths(adapters: Params, lora: LoraConfig,
                  dropout_rng: jax.Array | None = None) -> dict[str, dict[str, LowRank]]:
  """The decoder's low-rank paths (`model.forward(..., lora=...)`) for these adapters.

  Pass `dropout_rng` during training to drop each adapter's input per token; omit it for
  evaluation. Every site gets its own key.
  """
  paths: dict[str, dict[str, LowRank]] = {}
  for i, (layer_name, layer_adapters) in enumerate(sorted(adapters.items())):
    paths[layer_name] = {}
    for j, (name, ab) in enumerate(sorted(layer_adapters.items())):
      if name not in TARGETS:
        raise ValueError(f"adapters {layer_name}/{name}: unknown LoRA target; known: "
                         f"{sorted(TARGETS)}")
      key = None
      if dropout_rng is not None and lora.dropout > 0:
        key = jax.random.fold_in(jax.random.fold_in(dropout_rng, i), j)
      paths[layer_name][name] = LowRank(ab["a"], ab["b"], scale=lora.scale,
                                        dropout=lora.dropout, rng=key)
  return paths


def lora_forward(config: ModelConfig, base: Params, adapters: Params, lora: LoraConfig,
                 tokens: jax.Array, positions: jax.Array, attention_mask: jax.Array,
                 cache: Any = None, return_hidden: bool = False,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, Any]:
  """`model.forward` with the adapters applied unmerged and the base frozen.

  The base goes through `stop_gradient`, so differentiating w.r.t. (base, adapters) yields
  zeros for the base and XLA drops its weight-gradient matmuls.
  """
  return model_lib.forward(config, jax.lax.stop_gradient(base), tokens, positions,
                           attention_mask, cache, return_hidden,
                           adapter_paths(adapters, lora, dropout_rng))


def save_adapters(path: str | os.PathLike, adapters: Params, lora: LoraConfig) -> None:
  """Writes adapters alone (a small .npz plus the LoRA config as JSON), atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {}
  for layer_name, layer in adapters.items():
    for name, ab in layer.items():
      for part, value in ab.items():
        flat[f"{layer_name}/{name}/{part}"] = np.asarray(jax.device_get(value))
  flat["__config__"] = np.frombuffer(json.dumps(dataclasses.asdict(lora)).encode(), np.uint8)
  with atomic.writing(path, "wb") as f:
    np.savez(f, **flat)


def save_run_adapters(workdir: str | os.PathLike, params: Params, lora: LoraConfig | None
                      ) -> dict[str, str]:
  """A LoRA run's trained adapters (`params["lora"]`) in workdir/adapters.npz, where the
  evaluation and export jobs look for them: {"adapters": path}, or {} without LoRA."""
  if lora is None:
    return {}
  path = pathlib.Path(workdir) / "adapters.npz"
  save_adapters(path, jax.device_get(params["lora"]), lora)
  return {"adapters": str(path)}


def _entry(data: Any, path: pathlib.Path, key: str) -> np.ndarray:
  """One array of an open .npz; a pickled object or a damaged member names the file and key
  (pickles are never loaded: an adapter file holds plain arrays)."""
  try:
    return data[key]
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise ValueError(f"{path}: entry {key!r} is a pickled object array; adapter files hold "
                       "plain numeric arrays only, and pickles are not loaded") from None
    raise ValueError(f"{path}: entry {key!r} cannot be read ({e})") from None
  except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
    raise ValueError(f"{path}: entry {key!r} is truncated or damaged "
                     f"({type(e).__name__}: {e})") from None


def load_adapters(path: str | os.PathLike, model: ModelConfig | None = None
                  ) -> tuple[Params, LoraConfig]:
  """Reads adapters written by `save_adapters`; checks shapes against `model` if given."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no LoRA adapter file at {path}")
  try:
    data = np.load(path, allow_pickle=False)
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .npz, truncated or damaged "
                     f"({type(e).__name__}: {e})") from None
  if not isinstance(data, np.lib.npyio.NpzFile):  # a lone .npy array under this name
    raise ValueError(f"{path}: not a LoRA adapter file (one array, not an .npz archive)")
  with data:
    if "__config__" not in data:
      raise ValueError(f"{path}: not a LoRA adapter file (no __config__ entry)")
    raw = json.loads(bytes(_entry(data, path, "__config__")).decode())
    raw["targets"] = tuple(raw["targets"])
    lora = LoraConfig(**raw)
    adapters: dict = {}
    for key in data.files:
      if key == "__config__":
        continue
      layer_name, name, part = key.split("/")
      adapters.setdefault(layer_name, {}).setdefault(name, {})[part] = jnp.asarray(
          _entry(data, path, key))
  if model is not None:
    expected = jax.eval_shape(lambda: init_adapters(model, lora, jax.random.key(0)))
    want = {jax.tree_util.keystr(k): v.shape for k, v in
            jax.tree_util.tree_flatten_with_path(expected)[0]}
    got = {jax.tree_util.keystr(k): v.shape for k, v in
           jax.tree_util.tree_flatten_with_path(adapters)[0]}
    # Adapters on some layers only (`lora.last_layers`) are a subset of the full set.
    for key in sorted(got):
      if want.get(key) != got[key]:
        raise ValueError(f"{path}: adapter {key} expected shape {want.get(key)}, "
                         f"found {got.get(key)}")
  return adapters, lora
