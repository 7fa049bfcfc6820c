"""Official Flax/orbax Gemma checkpoints (Kaggle / google-deepmind `gemma` releases).

Those checkpoints hold the tree our model mirrors, with three differences this module undoes:
  * einsum weights sit one level deeper, under `w` (`attn/q_einsum/w`, `mlp/linear/w`);
  * multi-head models (Gemma 1 7B) store one `qkv_einsum` [3, N, D, H] instead of `q_einsum`
    [N, D, H] + `kv_einsum` [2, K, D, H];
  * `mlp/gating_einsum` is [2, D, F] in some releases and [2, F, D] in later ones;
and the embedding may carry padding rows beyond the tokenizer's vocabulary.
Keys are either nested or flat with '/' inside them ('transformer/layer_0/attn/q_einsum');
both are read by joining every key path with '/'.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from alignment import sharding as sharding_lib
from alignment.checkpoints.validate import validate_params
from alignment.model.config import PRESETS, ModelConfig

Params = Any
PathLike = str | os.PathLike

_LAYER = re.compile(r"^layer_(\d+)/")
# Architecture fields that can be read off the parameter shapes.
_SHAPE_FIELDS = ("num_layers", "embed_dim", "hidden_dim", "num_heads", "num_kv_heads",
                 "head_dim", "use_post_attn_norm", "use_post_ffw_norm", "use_qk_norm")


def _name(key_path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def _metadata_tree(checkpointer: ocp.PyTreeCheckpointer, path: pathlib.Path) -> Any:
  metadata = checkpointer.metadata(path)
  tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None)
  return getattr(metadata, "item_metadata", metadata) if tree is None else tree


def _restore(path: pathlib.Path, dtype: str, args_of: Callable[[str, Any], Any] | None = None
             ) -> dict[str, Any]:
  """Restores every array of the checkpoint, keyed by '/'-path: as host numpy in `dtype`, or
  as `args_of(name, leaf metadata)` says (`ocp.ArrayRestoreArgs` with a sharding: each
  process reads only its shards)."""
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    tree = _metadata_tree(checkpointer, path)
    if args_of is None:
      args_of = lambda name, _: ocp.RestoreArgs(restore_type=np.ndarray, dtype=jnp.dtype(dtype))
    restore_args = jax.tree_util.tree_map_with_path(lambda k, m: args_of(_name(k), m), tree)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: cannot read it as an orbax checkpoint ({e})") from e
  return {_name(k): (leaf if isinstance(leaf, jax.Array) else np.asarray(leaf))
          for k, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}


def _normalise_name(name: str) -> str:
  """Drops the 'transformer/' prefix and the einsum 'w' level: an official name -> ours."""
  parts = name.split("/")
  if "transformer" in parts:
    parts = parts[parts.index("transformer") + 1:]
  if parts[-1] == "w":
    parts = parts[:-1]
  return "/".join(parts)


def _normalise_names(raw: dict[str, Any]) -> dict[str, Any]:
  return {_normalise_name(name): value for name, value in raw.items()}


def _shape(flat: dict[str, np.ndarray], name: str) -> tuple[int, ...]:
  if name not in flat:
    raise ValueError(f"checkpoint has no parameter {name}")
  return flat[name].shape


def _read_shapes(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  """The shape-determined ModelConfig fields, plus the stored vocabulary rows."""
  layers = sorted({int(m.group(1)) for name in flat if (m := _LAYER.match(name))})
  if not layers or layers != list(range(len(layers))):
    raise ValueError(f"checkpoint layers are not layer_0..layer_N (found {layers[:8]}...)")
  rows, embed_dim = _shape(flat, "embedder/input_embedding")
  if "layer_0/attn/qkv_einsum" in flat:
    _, num_heads, _, head_dim = _shape(flat, "layer_0/attn/qkv_einsum")
    num_kv_heads = num_heads
  else:
    num_heads, _, head_dim = _shape(flat, "layer_0/attn/q_einsum")
    num_kv_heads = _shape(flat, "layer_0/attn/kv_einsum")[1]
  return dict(
      num_layers=len(layers), embed_dim=embed_dim,
      hidden_dim=_shape(flat, "layer_0/mlp/linear")[0], num_heads=num_heads,
      num_kv_heads=num_kv_heads, head_dim=head_dim,
      use_post_attn_norm="layer_0/post_attention_norm/scale" in flat,
      use_post_ffw_norm="layer_0/post_ffw_norm/scale" in flat,
      use_qk_norm="layer_0/attn/_query_norm/scale" in flat,
      vocab_rows=rows)


def _match_preset(found: dict[str, Any], path: pathlib.Path) -> ModelConfig:
  """The preset whose shapes the checkpoint has; its vocabulary follows the stored rows when
  only that differs (padding rows are cut, a smaller table is taken as it is)."""
  matches = [(name, cfg) for name, cfg in PRESETS.items()
             if all(getattr(cfg, f) == found[f] for f in _SHAPE_FIELDS)]
  exact = [(name, cfg) for name, cfg in matches if cfg.vocab_size == found["vocab_rows"]]
  matches = exact or matches
  if len(matches) == 1:
    cfg = matches[0][1]
    return cfg if cfg.vocab_size <= found["vocab_rows"] else cfg.replace(
        vocab_size=found["vocab_rows"])
  summary = ", ".join(f"{k}={v}" for k, v in found.items())
  if matches:
    listing = "\n  ".join(name for name, _ in matches)
    raise ValueError(f"{path}: shapes ({summary}) match several presets; pass cfg=:\n  "
                     f"{listing}")
  listing = "\n  ".join(
      f"{name}: " + ", ".join(f"{f}={getattr(cfg, f)}" for f in _SHAPE_FIELDS
                              if getattr(cfg, f) != found[f])
      for name, cfg in PRESETS.items())
  raise ValueError(f"{path}: no preset has these shapes ({summary}); pass cfg=. Candidates "
                   f"and the fields where they differ:\n  {listing}")


def _to_ours(flat: dict[str, Any], cfg: ModelConfig, path: pathlib.Path) -> dict[str, Any]:
  """Splits qkv_einsum, orders gating_einsum as [2, D, F] and cuts vocabulary padding (numpy
  arrays, or jax arrays inside `jax.jit`: shape methods only)."""
  out = {}
  d, f = cfg.embed_dim, cfg.hidden_dim
  for name, value in flat.items():
    if name.endswith("attn/qkv_einsum"):
      base = name[:-len("qkv_einsum")]
      out[base + "q_einsum"], out[base + "kv_einsum"] = value[0], value[1:]
    elif name.endswith("mlp/gating_einsum") and value.shape[1:] == (f, d) and f != d:
      out[name] = value.transpose(0, 2, 1)
    elif name == "embedder/input_embedding" and value.shape[0] != cfg.vocab_size:
      if value.shape[0] < cfg.vocab_size:
        raise ValueError(f"{path}: embedder/input_embedding has {value.shape[0]} rows, fewer "
                         f"than vocab_size={cfg.vocab_size}")
      out[name] = value[:cfg.vocab_size]  # padding rows past the tokenizer's vocabulary
    else:
      out[name] = value
  return out


def load_flax_gemma(path: PathLike, cfg: ModelConfig | None = None, dtype: str = "float32"
                    ) -> tuple[ModelConfig, Params]:
  """Loads an official Flax Gemma (1/2/3) orbax checkpoint as (config, params).

  With `cfg=None` the config is the preset whose parameter shapes the checkpoint has.
  Parameters are cast to `dtype`, which also becomes the config's compute/parameter dtype.
  """
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} not found")
  flat = _normalise_names(_restore(path, dtype))
  cfg = _config_for(flat, path, cfg, dtype)
  params = traverse_util.unflatten_dict(_to_ours(flat, cfg, path), sep="/")
  validate_params(params, cfg, source=str(path))
  return cfg, params


def _config_for(stored: dict[str, Any], path: pathlib.Path, cfg: ModelConfig | None,
                dtype: str) -> ModelConfig:
  """`cfg`, or the preset whose parameter shapes `stored` (arrays or their metadata) has,
  with `dtype` as its compute and parameter dtype."""
  if cfg is None:
    try:
      found = _read_shapes(stored)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e
    cfg = _match_preset(found, path)
  return cfg.replace(dtype=dtype, param_dtype=dtype)


def _stored_spec(name: str, shape: tuple[int, ...], ours: dict[str, Any], cfg: ModelConfig
                 ) -> tuple[Any, ...]:
  """The PartitionSpec entries a stored array is restored with, so that `_to_ours` turns its
  shards into the target's without gathering: the target's own spec, a leading None for
  `qkv_einsum` (its q part's spec), and swapped axes for [2, F, D] gating."""
  if name.endswith("attn/qkv_einsum"):
    return (None, *ours[name[:-len("qkv_einsum")] + "q_einsum"].spec)
  spec = tuple(ours[name].spec) + (None,) * (len(shape) - len(ours[name].spec))
  if name.endswith("mlp/gating_einsum") and shape[1:] == (cfg.hidden_dim, cfg.embed_dim) and (
      cfg.hidden_dim != cfg.embed_dim):
    return (spec[0], spec[2], spec[1])
  return spec


def load_flax_gemma_sharded(path: PathLike, shardings_of: Callable[[ModelConfig], Any],
                            cfg: ModelConfig | None = None) -> tuple[ModelConfig, Params]:
  """`load_flax_gemma` (float32) straight into shards: orbax restores each stored array onto
  a sharding matching the target's (`_stored_spec`), so each process reads only the slices
  its devices hold (tensorstore reads the chunks that cover them), and the layout changes run
  on device inside one jitted call whose outputs land on `shardings_of(cfg)`."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} not found")
  try:
    stored = _normalise_names({_name(k): m for k, m in jax.tree_util.tree_flatten_with_path(
        _metadata_tree(ocp.PyTreeCheckpointer(), path))[0]})
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: cannot read it as an orbax checkpoint ({e})") from e
  cfg = _config_for(stored, path, cfg, "float32")
  shapes = {name: tuple(m.shape) for name, m in stored.items()}
  abstract = {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in shapes.items()}
  validate_params(jax.eval_shape(lambda f: traverse_util.unflatten_dict(
      _to_ours(f, cfg, path), sep="/"), abstract), cfg, source=str(path))
  targets = traverse_util.flatten_dict(shardings_of(cfg), sep="/")
  mesh = next(iter(targets.values())).mesh
  shardings = {name: NamedSharding(mesh, sharding_lib.fit_to_shape(
      PartitionSpec(*_stored_spec(name, shape, targets, cfg)), shape, mesh))
      for name, shape in shapes.items()}
  restored = _normalise_names(_restore(path, "float32", lambda raw, m: ocp.ArrayRestoreArgs(
      sharding=shardings[_normalise_name(raw)], global_shape=tuple(m.shape),
      dtype=jnp.dtype("float32"))))
  flat = jax.jit(lambda f: _to_ours(f, cfg, path), out_shardings=targets)(restored)
  return cfg, traverse_util.unflatten_dict(flat, sep="/")
