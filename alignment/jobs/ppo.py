"""Job `ppo`: RLHF with PPO against a reward (reward models, or a toy reward for tests).

Each iteration samples responses to a batch of prompts with the KV-cache sampler, scores them
(policy, reference and critic in one jitted pass; the reward on the host), turns KL-penalised
rewards into advantages, and runs `ppo.epochs` epochs of mini-batch updates. The pure pieces
live in `alignment.rl`; this module is the loop. Writes to `workdir`: checkpoints/ (state +
prompt position + KL coefficient, so a resumed run continues exactly), TensorBoard events,
adapters.npz (the policy's LoRA) and result.json (per-iteration metrics; written last).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alignment import sharding
from alignment.data import batching
from alignment.jobs import common
from alignment.prompts import get_template
from alignment.rl import kl as kl_lib
from alignment.rl import ppo
from alignment.rl import prompts as prompts_lib
from alignment.rl.roles import Policy, Reference, Rollouts, ValueModel, make_reward
from alignment.sampling import SamplingParams, bucket_size, generate
from alignment.files import atomic
from alignment.training import distributed, metrics as metrics_lib, run_lock
from alignment.training import optimizer as optimizer_lib
from alignment.training import step as step_lib
from alignment.training import train_state as train_state_lib
from alignment.training.checkpointing import abstract_like
from alignment.training.trainer import Trainable, TrainerConfig

log = logging.getLogger(__name__)


def ppo_config(config: ml_collections.ConfigDict) -> ppo.PPOConfig:
  p = config.ppo
  return ppo.PPOConfig(
      clip_ratio=p.clip_ratio, clip_value=p.clip_value, vf_coef=p.vf_coef,
      entropy_coef=p.entropy_coef, gamma=p.gamma, lam=p.lam, estimator=p.estimator,
      whiten_rewards=p.whiten_rewards, whiten_advantages=p.whiten_advantages,
      group_size=config.rollout.samples_per_prompt)


def tokenized_prompts(config, tokenizer, template) -> list[tuple[prompts_lib.RLPrompt, list[int]]]:
  """The configured prompts through the template, with <bos>; over-long ones dropped."""
  loaded = prompts_lib.load_prompts(config.prompts.sources, common.data_dir(config), config.seed,
                                    per_source=config.prompts.per_source)
  kept = []
  for prompt in loaded:
    ids = tokenizer.encode(template.format(prompt.text), add_bos=True)
    if len(ids) <= config.rollout.max_prompt_length:
      kept.append((prompt, ids))
  if len(kept) < config.rollout.prompts_per_iteration:
    raise ValueError(f"only {len(kept)} of {len(loaded)} prompts fit "
                     f"rollout.max_prompt_length={config.rollout.max_prompt_length}; need at "
                     f"least rollout.prompts_per_iteration={config.rollout.prompts_per_iteration}")
  return kept


def rollout_batch(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, response: np.ndarray,
                  lengths: np.ndarray) -> dict[str, np.ndarray]:
  """[B, P + R] model inputs of prompt + response, and the response mask [B, R]."""
  response_mask = np.arange(response.shape[1])[None] < lengths[:, None]
  input_mask = np.concatenate([prompt_mask, response_mask], axis=1)
  return {"tokens": np.concatenate([prompt_tokens, response], axis=1).astype(np.int32),
          "input_mask": input_mask,
          "positions": np.maximum(np.cumsum(input_mask, axis=1) - 1, 0).astype(np.int32),
          "response_mask": response_mask}


@functools.lru_cache(maxsize=8)
def _jitted_decoder(policy: Policy):
  return jax.jit(policy.decoder)


# Compiled update steps by (roles, configs, shardings): a second trainer with the same setup
# (a resumed run in the same process, a benchmark) reuses the program instead of recompiling.
_UPDATE_CACHE: dict[Any, Any] = {}


def _sharding_key(tree: Any) -> tuple:
  return (jax.tree.structure(tree), tuple(jax.tree.leaves(tree)))


class PPOTrainer:
  """Holds the roles and compiled functions. One iteration is `generate` -> `score` ->
  `train`; the loop in `run` and the benchmark both drive these three."""

  def __init__(self, config: ml_collections.ConfigDict, trainable: Trainable, mesh,
               reward_fn, reference_params: Any | None = None):
    self.config = config
    self.mesh = mesh
    self.trainable = trainable  # which parameters a checkpoint leaves out (a LoRA run's base)
    cfg, lcfg = trainable.model_config, trainable.lora
    self.model_config = cfg
    self.tokenizer = trainable.tokenizer
    self.policy = Policy(cfg, lcfg)
    self.reference = Reference(cfg, shares_base=lcfg is not None)
    self.reference_params = reference_params
    self.value_model = ValueModel(cfg, lcfg)
    self.reward_fn = reward_fn
    self.ppo = ppo_config(config)
    r = config.rollout
    self.sampling = SamplingParams(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p)
    self.stop_ids = (self.tokenizer.eos_id, *self._end_of_turn())
    self.decoder = _jitted_decoder(self.policy)
    self.score_fn = ppo.make_score_fn(self.policy, self.reference, self.value_model)
    self.advantage_fn = ppo.make_advantage_fn(self.ppo)
    updates = config.train.iterations * config.ppo.epochs * config.ppo.num_minibatches
    t = config.train
    # The same optimizer settings (and warmup guard) as every other trainer, over updates.
    self.optimizer_config = TrainerConfig(
        steps=updates, learning_rate=t.learning_rate, schedule=t.schedule,
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm or None).optimizer(trainable.frozen)
    self.tx = optimizer_lib.make_optimizer(self.optimizer_config)
    self.compute_dtype = None if cfg.dtype == "float32" else cfg.dtype

  def _end_of_turn(self) -> tuple[int, ...]:
    try:
      return (self.tokenizer.token_id("<end_of_turn>"),)
    except KeyError:
      return ()

  def new_state(self, trainable: Trainable, rng: jax.Array):
    return train_state_lib.train_state_from_params(trainable.params, self.tx, rng, self.mesh,
                                                   trainable.shardings)

  def update(self, state, minibatch):
    """One jitted optimizer step on a mini-batch (state buffers donated)."""
    state_shardings = train_state_lib.state_shardings_of(state)
    batch_shardings = sharding.batch_shardings(self.mesh, minibatch)
    key = (self.policy, self.value_model, self.ppo, self.optimizer_config, self.compute_dtype,
           _sharding_key(state_shardings), _sharding_key(batch_shardings))
    if key not in _UPDATE_CACHE:
      step = ppo.make_update_step(self.policy, self.value_model, self.ppo, self.tx,
                                  self.compute_dtype)
      _UPDATE_CACHE[key] = step_lib.jit_train_step(step, state_shardings, batch_shardings,
                                                   sharding.replicated(self.mesh))
    return _UPDATE_CACHE[key](state, minibatch)

  def generate(self, state, prompts: list[tuple[prompts_lib.RLPrompt, list[int]]],
               rng: jax.Array) -> dict[str, Any]:
    """Samples `samples_per_prompt` responses per prompt; prompts padded to a length bucket."""
    group = self.config.rollout.samples_per_prompt
    rows = [ids for _, ids in prompts for _ in range(group)]
    length = bucket_size(max(len(r) for r in rows), 16, fine=True)
    padded = batching.left_pad_prompts(rows, buckets=(length,))
    prompt_tokens, prompt_mask = padded["tokens"], padded["input_mask"]
    out = generate(self.model_config, self.decoder(state.params), prompt_tokens, prompt_mask,
                   rng, self.config.rollout.max_new_tokens, self.sampling, self.stop_ids,
                   max(self.tokenizer.pad_id, 0), return_logprobs=True)
    response, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    return {"batch": rollout_batch(prompt_tokens, prompt_mask, response, lengths),
            "sampler_logprobs": np.asarray(out.logprobs),
            "prompts": [p for p, _ in prompts for _ in range(group)]}

  def score(self, state, rollout: dict[str, Any], kl_coef: float):
    """(train batch, metrics): scores, KL-penalised rewards, advantages, returns."""
    batch = rollout["batch"]
    response, lengths = batch["tokens"][:, -batch["response_mask"].shape[1]:], \
        batch["response_mask"].sum(1)
    scored = self.score_fn(state.params, self.reference_params,
                           distributed.global_batch(batch, self.mesh))
    texts = []
    stops = set(self.stop_ids)
    for row, n in zip(response, lengths):
      ids = row[:n].tolist()
      texts.append(self.tokenizer.decode(ids[:-1] if ids and ids[-1] in stops else ids))
    prompts = rollout["prompts"]
    scores = np.asarray(self.reward_fn(Rollouts(
        [p.text for p in prompts], [p.source for p in prompts], texts, response, lengths)),
        np.float32)
    if scores.shape != (len(prompts),) or not np.all(np.isfinite(scores)):
      raise ValueError(f"reward {getattr(self.reward_fn, 'name', self.reward_fn)!r} returned "
                       f"{scores.shape} scores (finite: {np.all(np.isfinite(scores))}); "
                       f"expected {len(prompts)} finite values")
    adv = self.advantage_fn(jnp.asarray(scores), scored, batch["response_mask"],
                            jnp.float32(kl_coef))
    mask = batch["response_mask"]
    train_batch = {**batch, "old_logprobs": scored["logprobs"], "old_values": scored["values"],
                   "advantages": adv["advantages"], "returns": adv["returns"]}
    mismatch = np.abs(np.asarray(scored["logprobs"]) - rollout["sampler_logprobs"])[mask]
    metrics = {
        "reward": float(scores.mean()), "reward_std": float(scores.std()),
        "kl": float(np.mean(adv["kl"])),
        "non_score_reward": float(np.sum(np.asarray(adv["rewards"])) / len(scores)
                                  - np.mean(np.asarray(adv["scores_used"]))),
        "rollout_entropy": float(np.asarray(scored["entropy"])[mask].mean()),
        "response_length": float(lengths.mean()),
        "value_mean": float(np.asarray(scored["values"])[mask].mean()),
        "sampler_logprob_max_abs_diff": float(mismatch.max()) if mismatch.size else 0.0,
        "kl_coef": float(kl_coef),
    }
    return train_batch, metrics, texts

  def train(self, state, train_batch, rng: jax.Array):
    """`ppo.epochs` passes over shuffled mini-batches; returns (state, mean metrics)."""
    collected = []
    for epoch in range(self.config.ppo.epochs):
      for mb in ppo.minibatches(train_batch, jax.random.fold_in(rng, epoch),
                                self.config.ppo.num_minibatches):
        state, m = self.update(state, distributed.global_batch(jax.device_get(mb), self.mesh))
        collected.append(m)
    values = jax.device_get(collected)
    return state, {k: float(np.mean([v[k] for v in values])) for k in values[0]}


def load_trainable(config: ml_collections.ConfigDict, mesh, rng: jax.Array) -> Trainable:
  """The policy's {"base", "lora"} (see `common.load_trainable`) plus the critic's "value"."""
  # An SFT start (config.model.adapters) is merged into the base at load: it is the reference.
  trainable = common.load_trainable(config, mesh, rng)
  value_model = ValueModel(trainable.model_config, trainable.lora)
  value = value_model.init(trainable.params["base"], jax.random.fold_in(rng, 7))
  trainable.params["value"] = value
  trainable.shardings["value"] = sharding.logical_to_shardings(
      value_model.logical_axes(), jax.eval_shape(lambda: value), mesh)
  return trainable


def build(config: ml_collections.ConfigDict, mesh):
  """(trainer, state, prompt iterator, KL controller), fresh (not yet restored)."""
  rng = jax.random.key(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  trainable = load_trainable(config, mesh, init_rng)
  if trainable.tokenizer is None:
    raise ValueError("ppo needs a tokenizer: the checkpoint has none; set model.tokenizer")
  reference_params = None
  if trainable.lora is None:  # full fine-tuning: the reference is a frozen copy
    reference_params = jax.tree.map(jnp.copy, trainable.params["base"])
  reward_fn = make_reward(config.reward, trainable.tokenizer)
  trainer = PPOTrainer(config, trainable, mesh, reward_fn, reference_params)
  template = get_template(config.prompts.template)
  prompts = prompts_lib.PromptIterator(tokenized_prompts(config, trainable.tokenizer, template),
                                       config.rollout.prompts_per_iteration, config.seed)
  k = config.kl
  kl_ctl = kl_lib.make_kl_controller(k.controller, k.coef, k.target, k.horizon)
  state = trainer.new_state(trainable, state_rng)
  return trainer, state, prompts, kl_ctl


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  workdir, mesh = common.start(config)  # joins the process group: process_count is known after
  if jax.process_count() > 1:
    # Lifting this needs the sampler to take and return global (multi-host) arrays and the
    # host-side reward and metrics to read only their own rows: not a small change.
    raise NotImplementedError(
        f"ppo runs on one host only ({jax.process_count()} processes found): the rollout "
        "sampler takes host numpy prompts and reads its outputs back with np.asarray, and the "
        "reward and metrics read the whole batch on the host; across hosts those arrays are "
        "not addressable by every process")
  trainer, state, prompts, kl_ctl = build(config, mesh)
  iterations = config.train.iterations
  history: list[dict[str, Any]] = []
  samples: list[dict[str, str]] = []
  start = 0
  with common.checkpointer(config, workdir, trainer.trainable) as ckpt:
    if ckpt.latest_step() is not None:
      restored = ckpt.restore_latest(abstract_like(state), skipped_from=state)
      if restored is not None:
        state = restored.state
        prompts.set_state(restored.data_state["prompts"])
        kl_ctl.value = float(restored.data_state["kl_coef"])
        start = restored.step
        log.info("resumed from iteration %d of %s", start, ckpt.directory)
    logger = metrics_lib.MetricsLogger(str(workdir), iterations, start,
                                       enabled=distributed.is_primary(),
                                       progress_bar=config.train.progress_bar,
                                       log_lines=False)  # the iteration lines below
    rng = jax.random.key(config.seed + 1)
    t_run = time.perf_counter()
    for it in range(start, iterations):
      it_rng = jax.random.fold_in(rng, it)
      t0 = time.perf_counter()
      rollout = trainer.generate(state, next(prompts), jax.random.fold_in(it_rng, 0))
      t1 = time.perf_counter()
      train_batch, metrics, texts = trainer.score(state, rollout, kl_ctl.value)
      t2 = time.perf_counter()
      state, train_metrics = trainer.train(state, train_batch, jax.random.fold_in(it_rng, 1))
      t3 = time.perf_counter()
      for name in ("policy_loss", "value_loss"):
        if not np.isfinite(train_metrics[name]):
          raise FloatingPointError(f"{name} became {train_metrics[name]} at iteration {it + 1}; "
                                   f"the last checkpoint is step {ckpt.latest_step()}")
      kl_ctl.update(metrics["kl"], len(rollout["prompts"]))
      record = {"iteration": it + 1, **metrics, **train_metrics,
                "time_generate": t1 - t0, "time_score": t2 - t1, "time_train": t3 - t2,
                "rollout_tokens_per_sec": metrics["response_length"] * len(texts) / (t1 - t0)}
      history.append(record)
      logger.advance()
      logger.log(it + 1, {k: v for k, v in record.items() if isinstance(v, float)})
      if (it + 1) % config.train.log_every == 0 or it + 1 == iterations:
        eta = metrics_lib.format_duration(
            (time.perf_counter() - t_run) / (it + 1 - start) * (iterations - it - 1))
        logger.message(f"iteration {it + 1}: " + ", ".join(
            f"{k}={record[k]:.4g}" for k in ("reward", "kl", "kl_coef", "rollout_entropy",
                                             "clip_fraction", "value_loss", "response_length",
                                             "time_generate", "time_score", "time_train"))
            + f", eta={eta}")
        samples.append({"iteration": it + 1, "prompt": rollout["prompts"][0].text,
                        "response": texts[0]})
      if (it + 1) % config.checkpoint.every == 0 or it + 1 == iterations:
        ckpt.save(it + 1, state, {"prompts": prompts.get_state(), "kl_coef": kl_ctl.value},
                  force=True)
    ckpt.wait()
    wall = time.perf_counter() - t_run
    logger.write_summary({"start_iteration": start, "final_iteration": iterations,
                          "wall_seconds": wall})
    logger.close()

  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(common.save_lora(workdir, state.params, trainer.policy.lora))
    summary = {"history": history, "samples": samples, "outputs": outputs,
               "start_iteration": start, "final_iteration": iterations, "wall_seconds": wall,
               "final_kl_coef": kl_ctl.value}
    atomic.write_json(workdir / "result.json", summary)
  return {"state": state, "history": history, "outputs": outputs, "kl_coef": kl_ctl.value,
          "start_iteration": start}
