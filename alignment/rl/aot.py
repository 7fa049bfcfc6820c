"""The PPO update step as a `training.aot.StepSpec`, to compile it for a TPU slice ahead of
time: policy and critic LoRA over one frozen shared base, as `jobs/ppo.py` trains them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignment import lora as lora_lib
from alignment import sharding
from alignment.model.config import ModelConfig
from alignment.rl import ppo
from alignment.rl.roles import Policy, ValueModel
from alignment.training import aot


def ppo_lora_step(model_config: ModelConfig, lora_config: lora_lib.LoraConfig,
                  ppo_config: ppo.PPOConfig, minibatch_size: int, prompt_len: int,
                  response_len: int) -> aot.StepSpec:
  """One PPO optimizer update on a scored mini-batch: prompt left-padded into the first
  `prompt_len` columns, response in the last `response_len`."""
  policy, value_model = Policy(model_config, lora_config), ValueModel(model_config, lora_config)

  def init_params(rng):
    params = aot.lora_params(model_config, lora_config, rng)
    params["value"] = value_model.init(params["base"], jax.random.fold_in(rng, 7))
    return params

  def param_shardings(mesh, abstract):
    shardings = aot.lora_param_shardings(model_config, lora_config, mesh, abstract)
    shardings["value"] = sharding.logical_to_shardings(value_model.logical_axes(),
                                                       abstract["value"], mesh)
    return shardings

  length = prompt_len + response_len
  full = lambda dtype: jax.ShapeDtypeStruct((minibatch_size, length), dtype)
  response = lambda dtype: jax.ShapeDtypeStruct((minibatch_size, response_len), dtype)
  batch = {"tokens": full(jnp.int32), "input_mask": full(jnp.bool_),
           "positions": full(jnp.int32), "response_mask": response(jnp.bool_),
           **{k: response(jnp.float32)
              for k in ("old_logprobs", "old_values", "advantages", "returns")}}
  return aot.StepSpec(init_params=init_params, param_shardings=param_shardings,
                      loss_fn=ppo.make_loss_fn(policy, value_model, ppo_config), batch=batch,
                      frozen=("^base/",))
