"""Job `rejection_sampling`: N rounds of best-of-K sampling, reward scoring and SFT.

Round r samples K answers per prompt from the current policy (KV-cache sampler, temperature
sampling), scores them (`rs.reward`: a saved reward-model directory, a named reward or
Llama 2's combination; `rl.rejection_sampling.make_reward`), keeps the best answer per prompt
and fine-tunes on those for `train.steps` steps with the SFT loss and data pipeline; round
r + 1 samples from the result. Writes to `workdir`: round_<r>/{samples.jsonl, checkpoints/,
round.json}, adapters.npz (LoRA), result.json (last). A rerun skips the rounds whose final
checkpoint exists.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax
import ml_collections
import numpy as np

from alignment import lora as lora_lib
from alignment.files import atomic
from alignment.jobs import common
from alignment.rl import prompts as prompts_lib
from alignment.rl import rejection_sampling as rs
from alignment.sampling import sample_config
from alignment.schema import from_section
from alignment.training import distributed, run_lock

log = logging.getLogger(__name__)


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict, reward_fn: rs.RewardFn | None = None
        ) -> dict[str, Any]:
  """Runs every round; `reward_fn` overrides `config.rs.reward` (e.g. a Python function)."""
  rounds_cfg = from_section(rs.RoundsConfig, config.rs, "config.rs")
  sample_config.sampling_params(config.sampling)  # checked before the model loads
  job = common.prepare(config, "rejection_sampling", num_rngs=2)
  workdir, mesh, trainable, template = job.workdir, job.mesh, job.trainable, job.template
  state_rng, sample_rng = job.rngs
  loaded = prompts_lib.load_prompts(config.data.prompt_source, common.data_dir(config),
                                    config.seed, num_prompts=config.data.num_prompts,
                                    per_source=config.data.per_source)
  prompts = [p.text for p in loaded]
  inputs = [template.format(p) for p in prompts]  # what the policy reads (= training prompts)
  reward = reward_fn or rs.make_reward(rounds_cfg, loaded)
  steps = config.train.steps
  trainer = common.example_trainer(config, trainable, mesh, template, state_rng,
                                   rounds_cfg.rounds * steps)

  history: list[dict[str, Any]] = []
  for r in range(rounds_cfg.rounds):
    round_dir, target = workdir / f"round_{r}", (r + 1) * steps
    if (round_dir / "round.json").is_file() and trainer.finished(round_dir, target):
      history.append(json.loads((round_dir / "round.json").read_text()))
      log.info("round %d already finished; restored step %d", r, target)
      continue
    sample_fn = common.make_sample_fn(trainable.model_config, trainer.policy_params(),
                                      trainable.tokenizer, config.sampling)
    candidates = rs.sample_candidates(sample_fn, inputs, rounds_cfg.num_samples,
                                      config.sampling.batch_size,
                                      jax.random.fold_in(sample_rng, r))
    rewards = rs.score_candidates(reward, prompts, candidates)
    best = rs.select_best(prompts, candidates, rewards)
    examples = rs.training_examples(best, rounds_cfg.reward_floor)
    if distributed.is_primary():
      atomic.write_jsonl(round_dir / "samples.jsonl", rs.sample_rows(best, candidates))
    train_summary = trainer.train(examples, target, round_dir)
    record = {"round": r, "prompts": len(prompts), "samples_per_prompt": rounds_cfg.num_samples,
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
    outputs.update(lora_lib.save_run_adapters(workdir, trainer.state.params, trainable.lora))
    atomic.write_json(workdir / "result.json", {"rounds": history, "outputs": outputs})
  return {"state": trainer.state, "rounds": history, "outputs": outputs}
