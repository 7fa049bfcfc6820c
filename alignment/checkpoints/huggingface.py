"""Hugging Face `transformers` checkpoints (config.json + safetensors) for Gemma 1, 2 and 3.

Most released and fine-tuned Gemma weights circulate in this format, and exporting to it lets a
model trained here be served or evaluated with any tool that reads it. Loading and saving go
through one pair of pure layout functions (`_to_hf` / `_from_hf`), so the expected tensor
shapes of a file are derived from the model config rather than listed by hand.

Layout facts: HF projections are torch `Linear` weights, [out_features, in_features];
`q_proj` is [N*H, D], `k_proj`/`v_proj` [K*H, D], `o_proj` [D, N*H], `gate_proj`/`up_proj`
[F, D], `down_proj` [D, F]. HF Gemma norms store `w` and apply `(1 + w)`, as ours do. Gemma 1
has two norms per layer and its `post_attention_layernorm` is the norm *before* the FFN;
Gemma 2/3 have four.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from alignment.files import atomic
from alignment.checkpoints import slices
from alignment.checkpoints.validate import validate_params
from alignment.model.config import ModelConfig
from alignment.model.transformer import param_shapes
from alignment.tokenizer import Tokenizer

Params = Any
PathLike = str | os.PathLike

FAMILIES = ("gemma", "gemma2", "gemma3")
_ARCHITECTURES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                  "gemma3": "Gemma3ForCausalLM"}
_MODEL_TYPES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}
_FAMILY_OF_MODEL_TYPE = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3",
                         "gemma3": "gemma3"}
# What transformers assumes for a field absent from config.json (multimodal Gemma 3 text
# configs omit most of them), so a config is read the way `from_pretrained` would read it.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                  num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16,
                  head_dim=256, rms_norm_eps=1e-6, rope_theta=10_000.0),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                   num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                   head_dim=256, rms_norm_eps=1e-6, rope_theta=10_000.0,
                   query_pre_attn_scalar=256, sliding_window=4096,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216,
                   num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                   head_dim=256, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                   rope_local_base_freq=10_000.0, query_pre_attn_scalar=256,
                   sliding_window=4096, sliding_window_pattern=6,
                   final_logit_softcapping=None, attn_logit_softcapping=None),
}
_MAX_POSITIONS = {"gemma": 8192, "gemma2": 8192, "gemma3": 131_072}
# Gemma tokenizer ids (pad, eos, bos); Gemma 3 also ends a chat turn with <end_of_turn> = 106.
_TOKEN_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
_GEMMA3_END_OF_TURN = 106
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new")
# Multimodal Gemma 3 checkpoints nest the decoder under one of these prefixes.
_TEXT_PREFIXES = ("model.language_model.", "language_model.model.")
_LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")


# ----------------------------------------------------------------------------- config.json


def infer_family(cfg: ModelConfig) -> str:
  """The HF family able to express `cfg`: QK-norm -> gemma3, soft-cap/post-norms -> gemma2."""
  if cfg.use_qk_norm:
    return "gemma3"
  if (cfg.use_post_attn_norm or cfg.use_post_ffw_norm or cfg.attn_logits_soft_cap
      or cfg.final_logit_soft_cap or "local" in cfg.attention_pattern):
    return "gemma2"
  return "gemma"


def _family_problems(cfg: ModelConfig, family: str) -> list[str]:
  """What in `cfg` the transformers class of `family` cannot represent."""
  if family not in FAMILIES:
    return [f"unknown family {family!r}; expected one of {FAMILIES}"]
  problems = []
  post = cfg.use_post_attn_norm and cfg.use_post_ffw_norm
  if family == "gemma":
    if cfg.use_post_attn_norm or cfg.use_post_ffw_norm:
      problems.append("Gemma 1 has no post-attention/post-FFN norms")
    if cfg.attn_logits_soft_cap or cfg.final_logit_soft_cap:
      problems.append("Gemma 1 has no logit soft-capping")
    if "local" in cfg.attention_pattern:
      problems.append("Gemma 1 has no sliding-window layers")
    if cfg.query_pre_attn_scalar != cfg.head_dim:
      problems.append(f"Gemma 1 scales queries by head_dim**-0.5, but query_pre_attn_scalar="
                      f"{cfg.query_pre_attn_scalar} != head_dim={cfg.head_dim}")
  elif not post:
    problems.append(f"{family} always has both post-attention and post-FFN norms")
  if family != "gemma3" and cfg.use_qk_norm:
    problems.append(f"{family} has no QK-norm")
  if family == "gemma3" and not cfg.use_qk_norm:
    problems.append("gemma3 always has QK-norm")
  if family == "gemma3" and cfg.attn_logits_soft_cap:
    problems.append("transformers' Gemma3 ignores attn_logit_softcapping")
  if family != "gemma3" and cfg.rope_base_local != cfg.rope_base_global:
    problems.append(f"{family} uses one RoPE base, but rope_base_local={cfg.rope_base_local} "
                    f"!= rope_base_global={cfg.rope_base_global}")
  if family != "gemma3" and cfg.rope_scale_global != 1.0:
    problems.append(f"{family} has no RoPE scaling (rope_scale_global={cfg.rope_scale_global})")
  return problems


def _check_family(cfg: ModelConfig, family: str) -> None:
  problems = _family_problems(cfg, family)
  if problems:
    raise ValueError(f"model config cannot be written as HF family {family!r}:\n  "
                     + "\n  ".join(problems))


def _minimal_period(kinds: list[str]) -> tuple[str, ...]:
  """Shortest prefix whose cyclic repetition reproduces `kinds` (our attention_pattern)."""
  for period in range(1, len(kinds) + 1):
    if all(kinds[i] == kinds[i % period] for i in range(len(kinds))):
      return tuple(kinds[:period])
  return tuple(kinds)


def _layer_kinds(hf: dict[str, Any], family: str, num_layers: int) -> list[str]:
  if family == "gemma":
    return ["global"] * num_layers
  names = {"sliding_attention": "local", "full_attention": "global"}
  if hf.get("layer_types") is not None:
    layer_types = list(hf["layer_types"])
    if len(layer_types) != num_layers:
      raise ValueError(f"layer_types has {len(layer_types)} entries but "
                       f"num_hidden_layers={num_layers}")
    unknown = sorted(set(layer_types) - names.keys())
    if unknown:
      raise ValueError(f"unsupported layer_types {unknown}; expected "
                       f"{sorted(names)}")
    return [names[t] for t in layer_types]
  if family == "gemma2":  # transformers' default: sliding, full, sliding, ...
    return ["local" if i % 2 == 0 else "global" for i in range(num_layers)]
  period = int(hf.get("sliding_window_pattern", _HF_DEFAULTS["gemma3"]["sliding_window_pattern"]))
  return ["local" if (i + 1) % period else "global" for i in range(num_layers)]


def _rope_theta(params: dict[str, Any], field: str) -> tuple[float | None, float]:
  """(theta or None, linear scale factor) of one RoPE parameter dict; default/linear only."""
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ("default", "linear"):
    raise ValueError(f"{field} has rope_type {kind!r}; only 'default' and "
                     f"'linear' RoPE are supported")
  factor = float(params.get("factor", 1.0)) if kind == "linear" else 1.0
  return float(params["rope_theta"]) if "rope_theta" in params else None, factor


def _rope(hf: dict[str, Any], family: str, get) -> tuple[float, float, float]:
  """(base_global, base_local, scale_global) from new-style rope_parameters or legacy keys."""
  rope = hf.get("rope_parameters")
  if family == "gemma3":
    theta_global, scale = float(get("rope_theta")), 1.0
    theta_local = float(get("rope_local_base_freq"))
    if hf.get("rope_scaling"):
      _, scale = _rope_theta(hf["rope_scaling"], "rope_scaling")
    if isinstance(rope, dict) and "full_attention" in rope:
      theta, scale = _rope_theta(rope["full_attention"], "rope_parameters.full_attention")
      theta_global = theta if theta is not None else theta_global
      if rope.get("sliding_attention"):
        theta, _ = _rope_theta(rope["sliding_attention"], "rope_parameters.sliding_attention")
        theta_local = theta if theta is not None else theta_local
    return theta_global, theta_local, scale
  theta, scale = float(get("rope_theta")), 1.0
  for field in ("rope_scaling", "rope_parameters"):
    if isinstance(hf.get(field), dict):
      found, scale = _rope_theta(hf[field], field)
      theta = found if found is not None else theta
  if scale != 1.0:
    raise ValueError(f"{family} does not support RoPE scaling (factor {scale})")
  return theta, theta, 1.0


def hf_config_to_model_config(hf_config: dict[str, Any]) -> ModelConfig:
  """Reads a transformers Gemma/Gemma2/Gemma3 config.json (dict) as a ModelConfig.

  A multimodal Gemma 3 config is read through its `text_config`. Absent fields take the value
  transformers assumes for that model type.
  """
  hf = hf_config
  if isinstance(hf.get("text_config"), dict):
    hf = {"model_type": "gemma3_text", **hf["text_config"]}
  model_type = hf.get("model_type")
  if model_type not in _FAMILY_OF_MODEL_TYPE:
    raise ValueError(f"model_type {model_type!r} is not supported; expected one "
                     f"of {sorted(_FAMILY_OF_MODEL_TYPE)}")
  family = _FAMILY_OF_MODEL_TYPE[model_type]
  defaults = _HF_DEFAULTS[family]

  def get(key: str) -> Any:
    if key in hf:
      return hf[key]
    if key in defaults:
      return defaults[key]
    raise ValueError(f"missing field {key!r} for model_type {model_type!r}")

  activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
  # Gemma 1 configs on the Hub say "gelu", but Gemma was trained with the tanh approximation.
  if activation not in _GELU_TANH and not (family == "gemma" and activation == "gelu"):
    raise ValueError(f"activation {activation!r} is not supported; Gemma uses "
                     f"the tanh-approximated GELU ({_GELU_TANH[0]})")
  if hf.get("attention_bias"):
    raise ValueError("attention_bias=true is not supported (Gemma has no biases)")
  if hf.get("use_bidirectional_attention"):
    raise ValueError("use_bidirectional_attention=true is not supported (this "
                     "decoder is causal)")
  if hf.get("tie_word_embeddings", True) is False:
    raise ValueError("tie_word_embeddings=false is not supported; Gemma ties the "
                     "output projection to the embedding")

  num_layers = int(get("num_hidden_layers"))
  head_dim = int(get("head_dim"))
  kinds = _layer_kinds(hf, family, num_layers)
  base_global, base_local, scale_global = _rope(hf, family, get)
  post_norms = family != "gemma"
  soft_cap = lambda key: None if family == "gemma" or get(key) is None else float(get(key))
  # transformers' Gemma3 attention never applies attn_logit_softcapping; read it as it runs.
  attn_soft_cap = None if family == "gemma3" else soft_cap("attn_logit_softcapping")
  has_local = "local" in kinds
  return ModelConfig(
      num_layers=num_layers,
      embed_dim=int(get("hidden_size")),
      hidden_dim=int(get("intermediate_size")),
      num_heads=int(get("num_attention_heads")),
      num_kv_heads=int(get("num_key_value_heads")),
      head_dim=head_dim,
      vocab_size=int(get("vocab_size")),
      query_pre_attn_scalar=(head_dim if family == "gemma"
                             else float(get("query_pre_attn_scalar"))),
      attention_pattern=_minimal_period(kinds),
      sliding_window_size=int(get("sliding_window")) if has_local else None,
      attn_logits_soft_cap=attn_soft_cap,
      final_logit_soft_cap=soft_cap("final_logit_softcapping"),
      use_post_attn_norm=post_norms,
      use_post_ffw_norm=post_norms,
      use_qk_norm=family == "gemma3",
      rope_base_global=base_global,
      rope_base_local=base_local,
      rope_scale_global=scale_global,
      norm_eps=float(get("rms_norm_eps")),
  )


def _token_ids(cfg: ModelConfig, family: str, tokenizer: Tokenizer | None = None
               ) -> dict[str, Any]:
  """pad/eos/bos ids: the tokenizer's own when given (a small or custom vocabulary numbers
  them differently), else Gemma's. A vocabulary with <end_of_turn> also stops on it."""
  if tokenizer is None:
    ids: dict[str, Any] = {k: v for k, v in _TOKEN_IDS.items() if v < cfg.vocab_size}
    if family == "gemma3" and _GEMMA3_END_OF_TURN < cfg.vocab_size:
      ids["eos_token_id"] = [_TOKEN_IDS["eos_token_id"], _GEMMA3_END_OF_TURN]
    return ids
  ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
  if tokenizer.pad_id >= 0:
    ids["pad_token_id"] = tokenizer.pad_id
  try:
    ids["eos_token_id"] = [tokenizer.eos_id, tokenizer.token_id("<end_of_turn>")]
  except KeyError:
    pass
  return ids


def model_config_to_hf_config(cfg: ModelConfig, family: str | None = None,
                              dtype: str = "float32", tokenizer: Tokenizer | None = None
                              ) -> dict[str, Any]:
  """The transformers config.json (as a dict) of GemmaForCausalLM / Gemma2ForCausalLM /
  Gemma3ForCausalLM for `cfg`; `family` defaults to `infer_family(cfg)`; special token ids
  are `tokenizer`'s when given.

  RoPE is written both as transformers 5 `rope_parameters` and as the legacy keys that
  transformers 4 reads.
  """
  family = family or infer_family(cfg)
  _check_family(cfg, family)
  out: dict[str, Any] = {
      "architectures": [_ARCHITECTURES[family]],
      "model_type": _MODEL_TYPES[family],
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.embed_dim,
      "intermediate_size": cfg.hidden_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "rms_norm_eps": cfg.norm_eps,
      "max_position_embeddings": _MAX_POSITIONS[family],
      "attention_bias": False,
      "attention_dropout": 0.0,
      "tie_word_embeddings": True,
      "initializer_range": 0.02,
      "use_cache": True,
      "dtype": dtype,
      "torch_dtype": dtype,
      **_token_ids(cfg, family, tokenizer),
  }
  out["hidden_act" if family == "gemma" else "hidden_activation"] = "gelu_pytorch_tanh"
  if family == "gemma":
    out["rope_theta"] = cfg.rope_base_global
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_base_global}
    return out
  out.update(
      # transformers 5 refuses a float here (`int` field); a config read from a
      # config.json holds it as one.
      query_pre_attn_scalar=(int(cfg.query_pre_attn_scalar)
                             if float(cfg.query_pre_attn_scalar).is_integer()
                             else cfg.query_pre_attn_scalar),
      sliding_window=cfg.sliding_window_size,
      layer_types=["sliding_attention" if k == "local" else "full_attention"
                   for k in cfg.attention_types],
      attn_logit_softcapping=cfg.attn_logits_soft_cap,
      final_logit_softcapping=cfg.final_logit_soft_cap,
      rope_theta=cfg.rope_base_global,
  )
  if family == "gemma2":
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_base_global}
    return out
  full = {"rope_type": "default", "rope_theta": cfg.rope_base_global}
  if cfg.rope_scale_global != 1.0:
    full = {"rope_type": "linear", "factor": cfg.rope_scale_global,
            "rope_theta": cfg.rope_base_global}
    out["rope_scaling"] = {"rope_type": "linear", "factor": cfg.rope_scale_global}
  out["rope_local_base_freq"] = cfg.rope_base_local
  out["rope_parameters"] = {
      "full_attention": full,
      "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_base_local}}
  return out


# ----------------------------------------------------------------------------- tensor layout


def _norm_names(family: str) -> dict[str, str]:
  """HF per-layer norm name -> our norm module name."""
  if family == "gemma":
    return {"input_layernorm": "pre_attention_norm", "post_attention_layernorm": "pre_ffw_norm"}
  return {"input_layernorm": "pre_attention_norm",
          "post_attention_layernorm": "post_attention_norm",
          "pre_feedforward_layernorm": "pre_ffw_norm",
          "post_feedforward_layernorm": "post_ffw_norm"}


def _to_hf(cfg: ModelConfig, params: Params, family: str) -> dict[str, Any]:
  """Our tree -> HF tensors. Only shape methods, so it also runs under `jax.eval_shape`."""
  n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
  out = {"model.embed_tokens.weight": params["embedder"]["input_embedding"],
         "model.norm.weight": params["final_norm"]["scale"]}
  for i in range(cfg.num_layers):
    p, pre = params[f"layer_{i}"], f"model.layers.{i}."
    attn, mlp = p["attn"], p["mlp"]
    out[pre + "self_attn.q_proj.weight"] = attn["q_einsum"].transpose(0, 2, 1).reshape(n * h, d)
    out[pre + "self_attn.k_proj.weight"] = attn["kv_einsum"][0].transpose(0, 2, 1).reshape(k * h, d)
    out[pre + "self_attn.v_proj.weight"] = attn["kv_einsum"][1].transpose(0, 2, 1).reshape(k * h, d)
    out[pre + "self_attn.o_proj.weight"] = attn["attn_vec_einsum"].reshape(n * h, d).T
    if family == "gemma3":
      out[pre + "self_attn.q_norm.weight"] = attn["_query_norm"]["scale"]
      out[pre + "self_attn.k_norm.weight"] = attn["_key_norm"]["scale"]
    for hf_name, ours in _norm_names(family).items():
      out[pre + hf_name + ".weight"] = p[ours]["scale"]
    out[pre + "mlp.gate_proj.weight"] = mlp["gating_einsum"][0].T
    out[pre + "mlp.up_proj.weight"] = mlp["gating_einsum"][1].T
    out[pre + "mlp.down_proj.weight"] = mlp["linear"].T
  return out


def _from_hf(cfg: ModelConfig, tensors: dict[str, np.ndarray], family: str) -> Params:
  """HF tensors (already shape-checked) -> our tree."""
  n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
  heads = lambda w, count: w.reshape(count, h, d).transpose(0, 2, 1)  # [C*H, D] -> [C, D, H]
  flat = {"embedder/input_embedding": tensors["model.embed_tokens.weight"],
          "final_norm/scale": tensors["model.norm.weight"]}
  for i in range(cfg.num_layers):
    get = lambda name: tensors[f"model.layers.{i}.{name}.weight"]
    ours = f"layer_{i}/"
    flat[ours + "attn/q_einsum"] = heads(get("self_attn.q_proj"), n)
    flat[ours + "attn/kv_einsum"] = np.stack([heads(get("self_attn.k_proj"), k),
                                              heads(get("self_attn.v_proj"), k)])
    flat[ours + "attn/attn_vec_einsum"] = get("self_attn.o_proj").T.reshape(n, h, d)
    if family == "gemma3":
      flat[ours + "attn/_query_norm/scale"] = get("self_attn.q_norm")
      flat[ours + "attn/_key_norm/scale"] = get("self_attn.k_norm")
    for hf_name, name in _norm_names(family).items():
      flat[ours + name + "/scale"] = get(hf_name)
    flat[ours + "mlp/gating_einsum"] = np.stack([get("mlp.gate_proj").T, get("mlp.up_proj").T])
    flat[ours + "mlp/linear"] = get("mlp.down_proj").T
  return traverse_util.unflatten_dict(
      {key: np.ascontiguousarray(value) for key, value in flat.items()}, sep="/")


def expected_hf_shapes(cfg: ModelConfig, family: str | None = None) -> dict[str, tuple]:
  """Name -> shape of every tensor an HF checkpoint of `cfg` holds."""
  family = family or infer_family(cfg)
  shapes = jax.eval_shape(lambda p: _to_hf(cfg, p, family), param_shapes(cfg))
  return {name: tuple(s.shape) for name, s in shapes.items()}


# ----------------------------------------------------------------------------- files


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found (an HF checkpoint needs it)")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def _open(file: pathlib.Path):
  """`safe_open`, with a truncated or damaged file's error naming it (safetensors' names no
  file: "Error while deserializing header: incomplete metadata")."""
  try:
    return safe_open(file, framework="numpy")
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{file}: not a readable safetensors file, truncated or damaged "
                     f"({e})") from None


def _weight_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """Canonical tensor name -> file holding it, from the shard index or the files' headers."""
  index = directory / "model.safetensors.index.json"
  if index.is_file():
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: missing 'weight_map'")
    files = {name: directory / file for name, file in weight_map.items()}
    for file in sorted(set(files.values())):
      if not file.is_file():
        raise FileNotFoundError(f"{file} (listed in {index}) not found")
    return files
  paths = ([directory / "model.safetensors"] if (directory / "model.safetensors").is_file()
           else sorted(directory.glob("*.safetensors")))
  if not paths:
    raise FileNotFoundError(f"no *.safetensors files in {directory}")
  files = {}
  for file in paths:
    with _open(file) as f:
      files.update({name: file for name in f.keys()})
  return files


def _canonical(name: str, multimodal: bool) -> str | None:
  """Strips a multimodal prefix; None for tensors outside the text decoder."""
  for prefix in _TEXT_PREFIXES:
    if name.startswith(prefix):
      return "model." + name[len(prefix):]
  if multimodal and name not in _LM_HEADS:
    return None  # vision tower, projector
  return name


def _locate(path_or_dir: PathLike, dtype: str):
  """Reads config.json and the tensor directory, and checks every shape against the config:
  (path, cfg, family, {canonical: (stored name, file)}, {file: [canonical names]}, expected
  shapes). No tensor data is read."""
  path = pathlib.Path(path_or_dir)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} not found")
  directory = path.parent if path.is_file() else path
  hf = _read_json(directory / "config.json")
  try:
    cfg = hf_config_to_model_config(hf)
  except ValueError as e:
    raise ValueError(f"{directory / 'config.json'}: {e}") from e
  cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
  family = infer_family(cfg)
  multimodal = isinstance(hf.get("text_config"), dict)
  files = ({name: path for name in _names_in(path)} if path.is_file()
           else _weight_files(directory))
  located = {}
  for name, file in files.items():
    canonical = _canonical(name, multimodal)
    if canonical is not None:
      located[canonical] = (name, file)

  by_file: dict[pathlib.Path, list[str]] = {}
  for canonical, (_, file) in located.items():
    by_file.setdefault(file, []).append(canonical)
  shapes = {}
  for file, names in by_file.items():
    with _open(file) as f:
      shapes.update({c: tuple(f.get_slice(located[c][0]).get_shape()) for c in names})

  expected = expected_hf_shapes(cfg, family)
  problems = []
  for name in sorted(expected.keys() - located.keys()):
    problems.append(f"missing tensor {name} (expected shape {expected[name]})")
  for name in sorted(located.keys() - expected.keys() - set(_LM_HEADS)):
    problems.append(f"unexpected tensor {located[name][0]} (shape {shapes[name]}) in "
                    f"{located[name][1].name}")
  for name in sorted(expected.keys() & located.keys()):
    if expected[name] != shapes[name]:
      problems.append(f"tensor {located[name][0]} in {located[name][1].name}: expected shape "
                      f"{expected[name]}, found {shapes[name]}")
  if problems:
    raise ValueError(f"{path} does not match its config.json:\n  " + "\n  ".join(problems))
  return path, cfg, family, located, by_file, expected


def _untied(path: pathlib.Path, head: str) -> ValueError:
  return ValueError(f"{path}: {head} differs from model.embed_tokens.weight; untied output "
                    f"projections are not supported")


def load_safetensors(path_or_dir: PathLike, dtype: str = "float32"
                     ) -> tuple[ModelConfig, Params]:
  """Loads an HF Gemma/Gemma2/Gemma3 checkpoint directory (or one .safetensors file beside
  its config.json), sharded or not. Parameters are cast to `dtype`, which also becomes the
  config's compute and parameter dtype."""
  path, cfg, family, located, by_file, expected = _locate(path_or_dir, dtype)
  np_dtype = jnp.dtype(dtype)
  tensors = {}
  for file, names in by_file.items():
    with _open(file) as f:
      for canonical in names:
        if canonical in expected or canonical in _LM_HEADS:
          tensors[canonical] = f.get_tensor(located[canonical][0]).astype(np_dtype, copy=False)
  for head in _LM_HEADS:
    if head in tensors and not np.array_equal(tensors.pop(head),
                                              tensors["model.embed_tokens.weight"]):
      raise _untied(path, head)
  params = _from_hf(cfg, tensors, family)
  validate_params(params, cfg, source=str(path))
  return cfg, params


class SafetensorsStore:
  """Boxes of the tensors of an HF checkpoint, read through `get_slice` (only those bytes);
  files are opened on first use and kept open until `close`."""

  def __init__(self, located: dict[str, tuple[str, pathlib.Path]]):
    self.located, self._files = located, {}

  def read(self, name: str, box: slices.Box) -> np.ndarray:
    stored, file = self.located[name]
    if file not in self._files:
      self._files[file] = _open(file)
    return np.asarray(self._files[file].get_slice(stored)[box]).astype(np.float32, copy=False)

  def close(self) -> None:
    self._files.clear()  # safe_open handles unmap when dropped


def hf_leaves(cfg: ModelConfig, store: slices.TensorStore, family: str,
              tied_heads: tuple[str, ...] = (), source: str = "checkpoint") -> Params:
  """Our parameter tree as `slices.Leaf`s over an HF checkpoint's tensors (the box-wise
  twin of `_from_hf`). A stored lm_head is compared with the embedding box by box."""
  n, k, h, d, f = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim,
                   cfg.hidden_dim)
  embed_name = "model.embed_tokens.weight"

  def embedding(box: slices.Box) -> np.ndarray:
    x = store.read(embed_name, box)
    for head in tied_heads:
      if not np.array_equal(store.read(head, box), x):
        raise _untied(pathlib.Path(source), head)
    return x

  flat = {"embedder/input_embedding": slices.Leaf((cfg.vocab_size, d), embedding),
          "final_norm/scale": slices.direct(store, "model.norm.weight", (d,))}
  for i in range(cfg.num_layers):
    name = lambda part: f"model.layers.{i}.{part}.weight"
    ours = f"layer_{i}/"
    flat[ours + "attn/q_einsum"] = slices.heads_in(store, name("self_attn.q_proj"), n, h, d)
    flat[ours + "attn/kv_einsum"] = slices.stacked(
        [slices.heads_in(store, name(f"self_attn.{p}_proj"), k, h, d) for p in "kv"])
    flat[ours + "attn/attn_vec_einsum"] = slices.heads_out(store, name("self_attn.o_proj"),
                                                           n, h, d)
    if family == "gemma3":
      flat[ours + "attn/_query_norm/scale"] = slices.direct(store, name("self_attn.q_norm"), (h,))
      flat[ours + "attn/_key_norm/scale"] = slices.direct(store, name("self_attn.k_norm"), (h,))
    for hf_name, norm in _norm_names(family).items():
      flat[ours + norm + "/scale"] = slices.direct(store, name(hf_name), (d,))
    flat[ours + "mlp/gating_einsum"] = slices.stacked(
        [slices.transposed(store, name(f"mlp.{p}_proj"), (f, d)) for p in ("gate", "up")])
    flat[ours + "mlp/linear"] = slices.transposed(store, name("mlp.down_proj"), (d, f))
  return traverse_util.unflatten_dict(flat, sep="/")


def load_safetensors_sharded(path_or_dir: PathLike, shardings_of: Callable[[ModelConfig], Any]
                             ) -> tuple[ModelConfig, Params]:
  """`load_safetensors` straight into shards: `shardings_of(cfg)` gives the target
  NamedShardings; each device box is read from the files and converted to float32 alone."""
  path, cfg, family, located, _, _ = _locate(path_or_dir, "float32")
  store = SafetensorsStore(located)
  heads = tuple(head for head in _LM_HEADS if head in located)
  leaves = hf_leaves(cfg, store, family, heads, source=str(path))
  validate_params(slices.shapes(leaves), cfg, source=str(path))
  try:
    return cfg, slices.place(leaves, shardings_of(cfg))
  finally:
    store.close()


def _names_in(file: pathlib.Path) -> list[str]:
  with _open(file) as f:
    return list(f.keys())


def tokenizer_files(tokenizer: Tokenizer) -> dict[str, bytes]:
  """The files transformers' `AutoTokenizer.from_pretrained` builds a Gemma tokenizer from:
  the SentencePiece model itself and the special pieces under their names in it (which a
  small or custom vocabulary spells differently from Gemma's <bos>/<eos>)."""
  special = {"bos_token": tokenizer.piece(tokenizer.bos_id),
             "eos_token": tokenizer.piece(tokenizer.eos_id),
             "unk_token": tokenizer.piece(tokenizer.unk_id)}
  if tokenizer.pad_id >= 0:
    special["pad_token"] = tokenizer.piece(tokenizer.pad_id)
  config = {"tokenizer_class": "GemmaTokenizer", **special, "add_bos_token": True,
            "add_eos_token": False, "model_max_length": 1_000_000,
            "clean_up_tokenization_spaces": False}
  as_json = lambda content: (json.dumps(content, indent=2) + "\n").encode()
  return {"tokenizer.model": tokenizer.serialized_proto(),
          "tokenizer_config.json": as_json(config),
          "special_tokens_map.json": as_json(special)}


def save_safetensors(cfg: ModelConfig, params: Params, out_dir: PathLike,
                     family: str | None = None, dtype: str = "float32",
                     tokenizer: Tokenizer | None = None) -> pathlib.Path:
  """Exports `params` as config.json + model.safetensors + generation_config.json, loadable by
  transformers' `AutoModelForCausalLM.from_pretrained(out_dir)`; with `tokenizer`, also its
  files (`tokenizer_files`), loadable by `AutoTokenizer.from_pretrained(out_dir)`.

  The export is written to a temporary directory beside `out_dir` and renamed into place, so
  an interrupted export never leaves a half-written checkpoint at `out_dir`; an existing
  `out_dir` is replaced.
  """
  family = family or infer_family(cfg)
  _check_family(cfg, family)
  validate_params(params, cfg, source="parameters to export")
  np_dtype = jnp.dtype(dtype)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  tensors = {name: np.ascontiguousarray(value.astype(np_dtype))
             for name, value in _to_hf(cfg, host, family).items()}
  if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} pieces but the "
                     f"model's vocabulary holds {cfg.vocab_size}")
  hf_config = model_config_to_hf_config(cfg, family, dtype=str(np_dtype), tokenizer=tokenizer)
  generation = {**_token_ids(cfg, family, tokenizer), "_from_model_config": True}

  with atomic.writing_directory(out_dir) as tmp:
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    for name, content in (("config.json", hf_config), ("generation_config.json", generation)):
      with open(tmp / name, "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
    for name, data in (tokenizer_files(tokenizer) if tokenizer is not None else {}).items():
      (tmp / name).write_bytes(data)
  return pathlib.Path(out_dir).absolute()
