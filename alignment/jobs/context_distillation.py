"""Job `context_distillation`: answer adversarial prompts with a safety preprompt, fine-tune on
the answers without it (Llama 2's safety context distillation), optionally targeted by an RM.

The preprompt goes where the prompt template puts a system preamble (`data.template`);
training examples use the same template with no preamble. With `distill.reward` set (a saved
safety reward-model directory, or a named reward), each prompt is also answered without the
preprompt and the distilled answer is kept only where it scores strictly higher. Refusal
rates (string-match classifier) of greedy answers to held-out prompts without the preprompt
are measured before and after when `eval.num_prompts` > 0. Writes to `workdir`:
samples.jsonl, checkpoints/, adapters.npz (LoRA), result.json (last).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import ml_collections

from alignment import lora as lora_lib
from alignment.files import atomic
from alignment.jobs import common
from alignment.rl import context_distillation as cd
from alignment.rl import prompts as prompts_lib
from alignment.rl import rejection_sampling as rs
from alignment.training import distributed, run_lock

log = logging.getLogger(__name__)


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict, reward_fn: rs.RewardFn | None = None
        ) -> dict[str, Any]:
  """`reward_fn` (or `distill.reward`) turns on targeted distillation."""
  if config.train.steps < 1 or config.sampling.batch_size < 1:
    raise ValueError("train.steps and sampling.batch_size must be >= 1")
  job = common.prepare(config, "context_distillation", num_rngs=2)
  workdir, trainable, template = job.workdir, job.trainable, job.template
  state_rng, sample_rng = job.rngs
  n_eval, d = config.eval.num_prompts, config.data
  prompts = [p.text for p in prompts_lib.load_prompts(
      d.prompt_source, common.data_dir(config), config.seed,
      num_prompts=d.num_prompts + n_eval if d.num_prompts else 0, per_source=d.per_source)]
  eval_prompts, prompts = prompts[:n_eval], prompts[n_eval:]
  if not prompts:
    raise ValueError("no prompts left for distillation after holding out eval.num_prompts")
  if reward_fn is None and config.distill.reward:
    reward_fn = rs.get_reward(config.distill.reward, config.distill.reward_batch_size)
  trainer = common.example_trainer(config, trainable, job.mesh, template, state_rng,
                                   config.train.steps)
  greedy = ml_collections.ConfigDict(dict(config.sampling.to_dict(), temperature=0.0))

  def sampler(section: ml_collections.ConfigDict):  # the current policy, drawing as `section`
    return common.make_sample_fn(trainable.model_config, trainer.policy_params(),
                                 trainable.tokenizer, section)

  def refusals() -> float:
    return cd.refusal_rate(sampler(greedy), eval_prompts, template, config.sampling.batch_size)

  figures: dict[str, Any] = {}
  samples, keep, train_summary = None, None, None
  if trainer.finished(workdir, config.train.steps):
    log.info("already trained to step %d; evaluating only", config.train.steps)
  else:
    if eval_prompts:
      figures["refusal_rate_before"] = refusals()
    preprompt = config.distill.preprompt
    samples = cd.generate(sampler(config.sampling), prompts, template, preprompt,
                          config.sampling.batch_size, sample_rng,
                          baseline=reward_fn is not None)
    keep, scores = cd.score_targeted(reward_fn, samples) if reward_fn else (None, None)
    examples = cd.training_examples(samples, keep)
    if distributed.is_primary():
      atomic.write_jsonl(workdir / "samples.jsonl",
                         cd.sample_rows(samples, template, preprompt, keep, scores))
    figures.update(prompts=len(prompts), examples=len(examples), targeted=keep is not None)
    train_summary = trainer.train(examples, config.train.steps, workdir)

  if eval_prompts:
    figures["refusal_rate_after"] = refusals()
  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(lora_lib.save_run_adapters(workdir, trainer.state.params, trainable.lora))
    atomic.write_json(workdir / "result.json",
                      {"figures": figures, "train": train_summary, "outputs": outputs})
  log.info("context distillation: %s", json.dumps(figures))
  return {"state": trainer.state, "samples": samples, "keep": keep, "figures": figures,
          "outputs": outputs}
