"""Job `ppo`: RLHF with PPO against a reward (reward models, or a toy reward for tests).

Each iteration samples responses to a batch of prompts with the KV-cache sampler, scores them
(policy, reference and critic in one jitted pass; the reward on the host), turns KL-penalised
rewards into advantages, and runs `ppo.epochs` epochs of mini-batch updates. The pieces live in
`alignment.rl` (`ppo_trainer.PPOTrainer`, driven by the shared `training.loop`); this module
builds them from the config. Writes to `workdir`: checkpoints/ (state +
prompt position + KL coefficient, so a resumed run continues exactly), TensorBoard events,
adapters.npz (the policy's LoRA) and result.json (per-iteration metrics; written last).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from alignment import lora as lora_lib
from alignment.checkpoints.loading import require_tokenizer
from alignment.files import atomic
from alignment.jobs import common
from alignment.prompts import get_template
from alignment.rl import kl as kl_lib
from alignment.rl import ppo
from alignment.rl import prompts as prompts_lib
from alignment.rl.ppo_trainer import PPOTrainer, RolloutConfig, add_critic, check_single_host
from alignment.rl.rewards import RewardSpec, make_reward
from alignment.sampling import sample_config
from alignment.schema import from_section
from alignment.training import distributed, run_lock
from alignment.training.trainer import TrainerConfig


def ppo_config(config: ml_collections.ConfigDict) -> ppo.PPOConfig:
  return from_section(ppo.PPOConfig, config.ppo, "config.ppo",
                      group_size=config.rollout.samples_per_prompt)


def rollout_config(config: ml_collections.ConfigDict) -> RolloutConfig:
  return from_section(RolloutConfig, config.rollout, "config.rollout",
                      sampling=sample_config.sampling_params(config.rollout),
                      epochs=config.ppo.epochs, num_minibatches=config.ppo.num_minibatches)


def trainer_config(config: ml_collections.ConfigDict, rollout: RolloutConfig) -> TrainerConfig:
  """The update phase's optimizer (steps = all updates) with the iteration cadences."""
  c = config.checkpoint
  return from_section(TrainerConfig, config.train, "config.train",
                      steps=config.train.iterations * rollout.updates_per_iteration,
                      max_grad_norm=config.train.max_grad_norm or None,
                      checkpoint_every=c.every, checkpoint_keep=c.keep, async_save=c.async_save)


def build(config: ml_collections.ConfigDict, mesh):
  """(trainer, prompt iterator, KL controller), fresh (not yet restored)."""
  init_rng, state_rng = jax.random.split(jax.random.key(config.seed))
  # An SFT start (config.model.adapters) is merged into the base at load: it is the reference.
  trainable = common.load_trainable(config, mesh, init_rng)
  add_critic(trainable, mesh, jax.random.fold_in(init_rng, 7))
  require_tokenizer(trainable.tokenizer, config.model)
  reference_params = None
  if trainable.lora is None:  # full fine-tuning: the reference is a frozen copy
    reference_params = jax.tree.map(jnp.copy, trainable.params["base"])
  rollout = rollout_config(config)
  reward = make_reward(from_section(RewardSpec, config.reward, "config.reward"),
                       trainable.tokenizer)
  trainer = PPOTrainer(trainable, ppo_config(config), rollout, trainer_config(config, rollout),
                       mesh, state_rng, reward, reference_params,
                       run_config=common.run_config(config))
  loaded = prompts_lib.load_prompts(config.prompts.sources, common.data_dir(config),
                                    config.seed, per_source=config.prompts.per_source)
  tokenized = prompts_lib.tokenize_prompts(
      loaded, trainable.tokenizer, get_template(config.prompts.template),
      config.rollout.max_prompt_length, config.rollout.prompts_per_iteration)
  prompts = prompts_lib.PromptIterator(tokenized, config.rollout.prompts_per_iteration,
                                       config.seed)
  k = config.kl
  return trainer, prompts, kl_lib.make_kl_controller(k.controller, k.coef, k.target, k.horizon)


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  workdir, mesh = common.start(config)  # joins the process group: process_count is known after
  check_single_host()
  trainer, prompts, kl_ctl = build(config, mesh)
  iterations = config.train.iterations
  result = trainer.fit(prompts, kl_ctl, iterations, workdir, config.seed + 1,
                       hooks=[trainer.log_hook(config.train.log_every)])
  start, wall = result.summary["start_step"], result.summary["wall_seconds"]
  state = result.state
  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(lora_lib.save_run_adapters(workdir, state.params, trainer.policy.lora))
    summary = {"history": trainer.history, "samples": trainer.samples, "outputs": outputs,
               "start_iteration": start, "final_iteration": iterations, "wall_seconds": wall,
               "final_kl_coef": kl_ctl.value}
    atomic.write_json(workdir / "result.json", summary)
  return {"state": state, "history": trainer.history, "outputs": outputs,
          "kl_coef": kl_ctl.value, "start_iteration": start}
