"""Gemma-style decoder (Gemma 1/2/3) in Flax linen."""

from alignment.model.config import ModelConfig, PRESETS, get_config
from alignment.model.masks import causal_mask, positions_from_mask, segment_causal_mask
from alignment.model.transformer import (
    Transformer, forward, init_cache, init_params, param_logical_axes, param_shapes)
from alignment.model.scalar_head import (
    ScalarHeadModel, init_scalar_head_params, scalar_head_forward, score_at)
