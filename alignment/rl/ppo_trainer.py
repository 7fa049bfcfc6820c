"""The PPO trainer: roles, rollouts, scoring and the update phase, driven by the shared loop.

One iteration is `generate` -> `score` -> `train`. The update phase is a `Trainer` of
PPO's loss (`rl/ppo.make_loss_fn`): its state, optimizer and compiled step. `fit` hands a
whole iteration to `training.loop.train` as one loop step, so PPO resumes, guards against
NaN, logs, saves and stops on SIGTERM exactly as every other trainer does; its checkpoints
count iterations and carry the prompt position and the KL coefficient.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignment import sharding
from alignment.data import batching
from alignment.rl import ppo
from alignment.rl import prompts as prompts_lib
from alignment.rl.rewards import Rollouts
from alignment.rl.roles import Policy, Reference, ValueModel
from alignment.sampling import SamplingParams, bucket_size, generate
from alignment.training import distributed, loop
from alignment.training.trainer import Trainable, Trainer, TrainerConfig

log = logging.getLogger(__name__)

TokenizedPrompt = tuple[prompts_lib.RLPrompt, list[int]]
# The figures of an iteration's log line (`PPOTrainer.log_hook`).
LOGGED = ("reward", "kl", "kl_coef", "rollout_entropy", "clip_fraction", "value_loss",
          "response_length", "time_generate", "time_score", "time_train")


def check_single_host() -> None:
  """PPO runs on one host only; call after the process group is joined."""
  if jax.process_count() > 1:
    # Lifting this needs the sampler to take and return global (multi-host) arrays and the
    # host-side reward and metrics to read only their own rows: not a small change.
    raise NotImplementedError(
        f"ppo runs on one host only ({jax.process_count()} processes found): the rollout "
        "sampler takes host numpy prompts and reads its outputs back with np.asarray, and the "
        "reward and metrics read the whole batch on the host; across hosts those arrays are "
        "not addressable by every process")


def add_critic(trainable: Trainable, mesh, rng: jax.Array) -> None:
  """The critic's parameters ("value": adapters or a full copy of the base, and a zero
  head) beside the policy's {"base", "lora"}, placed by their logical axes."""
  value_model = ValueModel(trainable.model_config, trainable.lora)
  value = value_model.init(trainable.params["base"], rng)
  trainable.params["value"] = value
  trainable.shardings["value"] = sharding.logical_to_shardings(
      value_model.logical_axes(), jax.eval_shape(lambda: value), mesh)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """How each iteration samples and how often it updates on what it sampled."""

  samples_per_prompt: int = 1
  max_new_tokens: int = 64
  sampling: SamplingParams = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)
  epochs: int = 2
  num_minibatches: int = 2

  @property
  def updates_per_iteration(self) -> int:
    return self.epochs * self.num_minibatches


def rollout_batch(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, response: np.ndarray,
                  lengths: np.ndarray) -> dict[str, np.ndarray]:
  """[B, P + R] model inputs of prompt + response, and the response mask [B, R]."""
  response_mask = np.arange(response.shape[1])[None] < lengths[:, None]
  input_mask = np.concatenate([prompt_mask, response_mask], axis=1)
  return {"tokens": np.concatenate([prompt_tokens, response], axis=1).astype(np.int32),
          "input_mask": input_mask,
          "positions": np.maximum(np.cumsum(input_mask, axis=1) - 1, 0).astype(np.int32),
          "response_mask": response_mask}


def rows_on_mesh(batch: dict[str, jax.Array], idx: jax.Array, mesh) -> dict[str, jax.Array]:
  """`batch`'s rows `idx`, laid out in the batch shardings the compiled step expects."""
  rows = jax.tree.map(lambda x: x[idx], batch)
  return jax.lax.with_sharding_constraint(rows, sharding.batch_shardings(mesh, rows))


class PromptStream:
  """The loop's "batches" for PPO: the next iteration's prompts. Its saved state is the
  prompt position and the KL coefficient, so a resumed run continues both."""

  def __init__(self, prompts: prompts_lib.PromptIterator, kl_controller):
    self.prompts, self.kl = prompts, kl_controller

  def __iter__(self) -> PromptStream:
    return self

  def __next__(self) -> list[TokenizedPrompt]:
    return next(self.prompts)

  def get_state(self) -> dict[str, Any]:
    return {"prompts": self.prompts.get_state(), "kl_coef": self.kl.value}

  def set_state(self, state: dict[str, Any]) -> None:
    self.prompts.set_state(state["prompts"])
    self.kl.value = float(state["kl_coef"])


class PPOTrainer:
  """Policy, frozen reference, critic and reward around one `Trainer` of the PPO loss."""

  def __init__(self, trainable: Trainable, config: ppo.PPOConfig, rollout: RolloutConfig,
               train: TrainerConfig, mesh, rng: jax.Array, reward_fn: Callable,
               reference_params: Any | None = None, run_config: dict[str, Any] | None = None):
    """`train.steps` counts optimizer updates (iterations x updates_per_iteration); its log
    and checkpoint cadence count iterations. `reference_params` is the frozen copy of a full
    fine-tuning run (None with LoRA: the reference is the shared base without adapters)."""
    cfg, lcfg = trainable.model_config, trainable.lora
    self.model_config, self.tokenizer, self.mesh = cfg, trainable.tokenizer, mesh
    self.config, self.rollout = config, rollout
    self.policy = Policy(cfg, lcfg)
    self.reference = Reference(cfg, shares_base=lcfg is not None)
    self.value_model = ValueModel(cfg, lcfg)
    self.reference_params = reference_params
    self.reward_fn = reward_fn
    self.updates = Trainer(trainable, ppo.make_loss_fn(self.policy, self.value_model, config),
                           train, mesh, rng, run_config)
    self.stop_ids = (self.tokenizer.eos_id, *self._end_of_turn())
    self.decoder = jax.jit(self.policy.decoder)
    self.score_fn = ppo.make_score_fn(self.policy, self.reference, self.value_model)
    self.advantage_fn = ppo.make_advantage_fn(config)
    self.history: list[dict[str, Any]] = []  # one record per iteration run in this process
    self.samples: list[dict[str, Any]] = []  # the first answer of each logged iteration
    self._last_tokens = 0
    self._take_rows = jax.jit(lambda batch, idx: rows_on_mesh(batch, idx, mesh))

  @property
  def state(self):
    return self.updates.state

  def log_hook(self, every: int) -> loop.Hook:
    """A loop hook logging the last iteration's LOGGED figures every `every` iterations."""
    def log_line(step: int, _state) -> None:
      record = self.history[-1]
      log.info("iteration %d: %s", step, ", ".join(f"{k}={record[k]:.4g}" for k in LOGGED))

    return loop.Hook(every, log_line)

  def _end_of_turn(self) -> tuple[int, ...]:
    try:
      return (self.tokenizer.token_id("<end_of_turn>"),)
    except KeyError:
      return ()

  def generate(self, state, prompts: Sequence[TokenizedPrompt], rng: jax.Array
               ) -> dict[str, Any]:
    """Samples `samples_per_prompt` responses per prompt; prompts padded to a length bucket."""
    group = self.rollout.samples_per_prompt
    rows = [ids for _, ids in prompts for _ in range(group)]
    length = bucket_size(max(len(r) for r in rows), 16, fine=True)
    padded = batching.left_pad_prompts(rows, buckets=(length,))
    prompt_tokens, prompt_mask = padded["tokens"], padded["input_mask"]
    out = generate(self.model_config, self.decoder(state.params), prompt_tokens, prompt_mask,
                   rng, self.rollout.max_new_tokens, self.rollout.sampling, self.stop_ids,
                   max(self.tokenizer.pad_id, 0), return_logprobs=True)
    response, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    return {"batch": rollout_batch(prompt_tokens, prompt_mask, response, lengths),
            "sampler_logprobs": np.asarray(out.logprobs),
            "prompts": [p for p, _ in prompts for _ in range(group)]}

  def _texts(self, response: np.ndarray, lengths: np.ndarray) -> list[str]:
    stops, texts = set(self.stop_ids), []
    for row, n in zip(response, lengths):
      ids = row[:n].tolist()
      texts.append(self.tokenizer.decode(ids[:-1] if ids and ids[-1] in stops else ids))
    return texts

  def score(self, state, rollout: dict[str, Any], kl_coef: float):
    """(train batch, metrics, texts): scores, KL-penalised rewards, advantages, returns."""
    batch = rollout["batch"]
    mask = batch["response_mask"]
    response, lengths = batch["tokens"][:, -mask.shape[1]:], mask.sum(1)
    scored = self.score_fn(state.params, self.reference_params,
                           distributed.global_batch(batch, self.mesh))
    texts = self._texts(response, lengths)
    prompts = rollout["prompts"]
    scores = np.asarray(self.reward_fn(Rollouts(
        [p.text for p in prompts], [p.source for p in prompts], texts, response, lengths)),
        np.float32)
    if scores.shape != (len(prompts),) or not np.all(np.isfinite(scores)):
      raise ValueError(f"reward {getattr(self.reward_fn, 'name', self.reward_fn)!r} returned "
                       f"{scores.shape} scores (finite: {np.all(np.isfinite(scores))}); "
                       f"expected {len(prompts)} finite values")
    adv = self.advantage_fn(jnp.asarray(scores), scored, mask, jnp.float32(kl_coef))
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
    """`epochs` passes over shuffled mini-batches; returns (state, mean metrics). The rollout
    stays on the device (its host rows are copied there once: PPO runs on one host); each
    mini-batch is gathered there, in the batch shardings of the compiled step."""
    placed = jax.device_put(train_batch)
    size = jax.tree.leaves(placed)[0].shape[0]
    collected = []
    for epoch in range(self.rollout.epochs):
      for idx in ppo.minibatch_indices(size, jax.random.fold_in(rng, epoch),
                                       self.rollout.num_minibatches):
        mb = self._take_rows(placed, idx)
        state, m = self.updates.compile(mb)(state, mb)
        collected.append(m)
    values = jax.device_get(collected)
    return state, {k: float(np.mean([v[k] for v in values])) for k in values[0]}

  def iteration(self, state, prompts: Sequence[TokenizedPrompt], kl_controller,
                rng: jax.Array):
    """One PPO iteration: (state, record of its metrics and phase times, rollout, texts).
    The KL controller is updated from the rollout's KL."""
    t0 = time.perf_counter()
    rollout = self.generate(state, prompts, jax.random.fold_in(rng, 0))
    t1 = time.perf_counter()
    train_batch, metrics, texts = self.score(state, rollout, kl_controller.value)
    t2 = time.perf_counter()
    state, train_metrics = self.train(state, train_batch, jax.random.fold_in(rng, 1))
    t3 = time.perf_counter()
    kl_controller.update(metrics["kl"], len(rollout["prompts"]))
    record = {**metrics, **train_metrics,
              "time_generate": t1 - t0, "time_score": t2 - t1, "time_train": t3 - t2,
              "rollout_tokens_per_sec": metrics["response_length"] * len(texts) / (t1 - t0),
              "rollout_shape": list(rollout["batch"]["tokens"].shape)}
    return state, record, rollout, texts

  def fit(self, prompts: prompts_lib.PromptIterator, kl_controller, iterations: int,
          directory: str | pathlib.Path, seed: int, hooks: Sequence[loop.Hook] = ()
          ) -> loop.TrainResult:
    """Runs iterations up to `iterations` (resuming from `directory`'s latest checkpoint)
    through the shared loop. Iteration i draws from `fold_in(key(seed), i)`, so a resumed
    run samples what an uninterrupted one would."""
    per_iteration = self.rollout.updates_per_iteration
    rng = jax.random.key(seed)
    log_every = self.updates.config.log_every

    def step(state, batch):
      it = int(state.step) // per_iteration
      state, record, rollout, texts = self.iteration(state, batch, kl_controller,
                                                     jax.random.fold_in(rng, it))
      self.history.append({"iteration": it + 1, **record})
      self._last_tokens = int(rollout["batch"]["response_mask"].sum())
      if (it + 1) % log_every == 0 or it + 1 == iterations:
        self.samples.append({"iteration": it + 1, "prompt": rollout["prompts"][0].text,
                             "response": texts[0]})
      return state, {k: v for k, v in record.items() if isinstance(v, float)}

    c = self.updates.config
    with self.updates.checkpointer(directory) as ckpt:
      result = loop.train(
          loop.LoopConfig(num_steps=iterations, log_every=c.log_every,
                          output_dir=str(directory), progress_bar=c.progress_bar),
          self.updates.state, step, PromptStream(prompts, kl_controller), ckpt,
          mesh=self.mesh,
          learning_rate_fn=lambda it: self.updates.learning_rate(it * per_iteration),
          tokens_per_step=lambda _: self._last_tokens, hooks=hooks,
          step_of=lambda s: int(s.step) // per_iteration, place_batch=lambda b, _: b)
    self.updates.state = result.state
    return result

