"""Job `rejection_sampling`: N rounds of best-of-K sampling, reward scoring and SFT.

Round r samples K answers per prompt from the current policy (KV-cache sampler, temperature
sampling), scores them (`rs.reward`: a saved reward-model directory or a named reward), keeps
the best answer per prompt and fine-tunes on those for `train.steps` steps with the SFT job's
loss and data pipeline; round r + 1 samples from the result. Writes to `workdir`:
round_<r>/{samples.jsonl, checkpoints/, round.json}, adapters.npz (LoRA), result.json (last).
A rerun skips the rounds whose final checkpoint exists.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax
import ml_collections
import numpy as np

from alignment import lora as lora_lib
from alignment import schema
from alignment.jobs import common
from alignment.jobs.common import make_sample_fn
from alignment.rl import prompts as prompts_lib
from alignment.sampling import sample_config
from alignment.rl import rejection_sampling as rs
from alignment.files import atomic
from alignment.training import distributed, run_lock

log = logging.getLogger(__name__)


def check_config(config: ml_collections.ConfigDict) -> None:
  for name, value in (("rs.rounds", config.rs.rounds), ("rs.num_samples", config.rs.num_samples),
                      ("train.steps", config.train.steps),
                      ("sampling.batch_size", config.sampling.batch_size),
                      ("sampling.max_new_tokens", config.sampling.max_new_tokens)):
    if value < 1:
      raise ValueError(f"{name}={value} must be >= 1")
  sample_config.sampling_params(config.sampling)  # validates temperature / top-k / top-p


def make_reward(section: ml_collections.ConfigDict,
                prompts: list[prompts_lib.RLPrompt]) -> rs.RewardFn:
  """`rs.reward`: 'combined' (Llama 2's rule over `rs.safety_rm` and `rs.helpfulness_rm`,
  prompts from `rs.unsafe_sources` flagged unsafe), a named reward or a reward-model dir."""
  if section.reward != "combined":
    return rs.get_reward(section.reward, section.reward_batch_size)
  if not (section.safety_rm and section.helpfulness_rm):
    raise ValueError("rs.reward='combined' needs rs.safety_rm and rs.helpfulness_rm (saved "
                     "reward-model directories, <reward workdir>/reward_model)")
  unsafe_sources = set(schema.names(section.unsafe_sources))
  unknown = unsafe_sources - {p.source for p in prompts}
  if unknown:
    raise ValueError(f"rs.unsafe_sources names {sorted(unknown)}, which no prompt came from "
                     f"(sources: {sorted({p.source for p in prompts})})")
  return rs.combined_reward(
      rs.get_reward(section.safety_rm, section.reward_batch_size),
      rs.get_reward(section.helpfulness_rm, section.reward_batch_size),
      [p.text for p in prompts if p.source in unsafe_sources], section.safety_threshold)


def _write_jsonl(path, rows) -> None:
  with atomic.writing(path) as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict, reward_fn: rs.RewardFn | None = None
        ) -> dict[str, Any]:
  """Runs every round; `reward_fn` overrides `config.rs.reward` (e.g. a Python function)."""
  check_config(config)
  job = common.prepare(config, "rejection_sampling", num_rngs=2)
  workdir, mesh, trainable, template = job.workdir, job.mesh, job.trainable, job.template
  state_rng, sample_rng = job.rngs
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer
  loaded = prompts_lib.load_prompts(config.data.prompt_source, common.data_dir(config),
                                    config.seed, num_prompts=config.data.num_prompts,
                                    per_source=config.data.per_source)
  prompts = [p.text for p in loaded]
  inputs = [template.format(p) for p in prompts]  # what the policy reads (= training prompts)
  reward = reward_fn or make_reward(config.rs, loaded)
  rounds, steps = config.rs.rounds, config.train.steps
  trainer = common.example_trainer(config, trainable, mesh, template, state_rng,
                                   rounds * steps)

  history: list[dict[str, Any]] = []
  for r in range(rounds):
    round_dir = workdir / f"round_{r}"
    target = (r + 1) * steps
    if (round_dir / "round.json").is_file() and trainer.finished(round_dir, target):
      history.append(json.loads((round_dir / "round.json").read_text()))
      log.info("round %d already finished; restored step %d", r, target)
      continue
    sample_fn = make_sample_fn(cfg, trainer.policy_params(), tokenizer, config.sampling)
    candidates = rs.sample_candidates(sample_fn, inputs, config.rs.num_samples,
                                      config.sampling.batch_size,
                                      jax.random.fold_in(sample_rng, r))
    rewards = rs.score_candidates(reward, prompts, candidates)
    best = rs.select_best(prompts, candidates, rewards)
    min_reward = config.rs.min_reward if config.rs.use_min_reward else None
    examples = rs.training_examples(best, min_reward)
    if distributed.is_primary():
      _write_jsonl(round_dir / "samples.jsonl", (
          {"prompt": b.prompt, "candidates": c, "rewards": list(b.rewards), "best": b.index}
          for b, c in zip(best, candidates)))
    train_summary = trainer.train(examples, target, round_dir)
    record = {"round": r, "prompts": len(prompts), "samples_per_prompt": config.rs.num_samples,
              "mean_reward": float(np.mean(rewards)),
              "mean_best_reward": float(np.mean([b.reward for b in best])),
              "examples": len(examples), "final_step": int(trainer.state.step),
              "final_loss": train_summary.get("final_loss")}
    history.append(record)
    log.info("round %d: %s", r, json.dumps(record))
    if distributed.is_primary():
      atomic.write_json(round_dir / "round.json", record)

  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(lora_lib.save_run_adapters(workdir, trainer.state.params, lcfg))
    atomic.write_json(workdir / "result.json", {"rounds": history, "outputs": outputs})
  return {"state": trainer.state, "rounds": history, "outputs": outputs}
