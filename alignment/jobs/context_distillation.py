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

import jax
import ml_collections
import numpy as np

from alignment import lora as lora_lib
from alignment.answers.records import AnswerRecord
from alignment.evaluation import scorers
from alignment.jobs import common
from alignment.jobs.common import make_sample_fn
from alignment.rl import context_distillation as cd
from alignment.rl import generation
from alignment.rl import prompts as prompts_lib
from alignment.rl import rejection_sampling as rs
from alignment.files import atomic
from alignment.training import distributed, run_lock

log = logging.getLogger(__name__)


def refusal_rate(sample_fn: generation.SampleFn, prompts: list[str], template, batch_size: int
                 ) -> float:
  """Share of (fully or partly) refused answers to `prompts` without any preprompt."""
  answers = generation.generate_in_batches(
      sample_fn, [cd.model_input(p, template) for p in prompts], batch_size, jax.random.key(0))
  records = [AnswerRecord(set="cd", id=str(i), prompt=p, answer=a)
             for i, (p, a) in enumerate(zip(prompts, answers))]
  return float(np.mean([s > 0 for s in scorers.refusal_scorer(records)]))


@run_lock.released_on_return
def run(config: ml_collections.ConfigDict, reward_fn: rs.RewardFn | None = None
        ) -> dict[str, Any]:
  """`reward_fn` (or `distill.reward`) turns on targeted distillation."""
  if config.train.steps < 1 or config.sampling.batch_size < 1:
    raise ValueError("train.steps and sampling.batch_size must be >= 1")
  job = common.prepare(config, "context_distillation", num_rngs=2)
  workdir, mesh, trainable, template = job.workdir, job.mesh, job.trainable, job.template
  state_rng, sample_rng = job.rngs
  cfg, lcfg, tokenizer = trainable.model_config, trainable.lora, trainable.tokenizer
  n_eval = config.eval.num_prompts
  prompts = [p.text for p in prompts_lib.load_prompts(
      config.data.prompt_source, common.data_dir(config), config.seed,
      num_prompts=config.data.num_prompts + n_eval if config.data.num_prompts else 0,
      per_source=config.data.per_source)]
  eval_prompts, prompts = prompts[:n_eval], prompts[n_eval:]
  if not prompts:
    raise ValueError("no prompts left for distillation after holding out eval.num_prompts")
  if reward_fn is None and config.distill.reward:
    reward_fn = rs.get_reward(config.distill.reward, config.distill.reward_batch_size)
  trainer = common.example_trainer(config, trainable, mesh, template, state_rng,
                                   config.train.steps)
  greedy = ml_collections.ConfigDict(dict(config.sampling.to_dict(), temperature=0.0))

  figures: dict[str, Any] = {}
  if trainer.finished(workdir, config.train.steps):
    log.info("already trained to step %d; evaluating only", config.train.steps)
    samples, keep, train_summary = None, None, None
  else:
    policy = trainer.policy_params()
    if eval_prompts:
      figures["refusal_rate_before"] = refusal_rate(
          make_sample_fn(cfg, policy, tokenizer, greedy), eval_prompts, template,
          config.sampling.batch_size)
    sample_fn = make_sample_fn(cfg, policy, tokenizer, config.sampling)
    samples = cd.generate(sample_fn, prompts, template, config.distill.preprompt,
                          config.sampling.batch_size, sample_rng,
                          baseline=reward_fn is not None)
    keep, scores = None, {}
    if reward_fn is not None:
      scores = {"with": np.asarray(reward_fn(prompts, samples.with_preprompt), np.float64),
                "without": np.asarray(reward_fn(prompts, samples.without_preprompt),
                                      np.float64)}
      keep = cd.targeted_keep(scores["with"], scores["without"])
    examples = cd.training_examples(samples, keep)
    if distributed.is_primary():
      with atomic.writing(workdir / "samples.jsonl") as f:
        for i, p in enumerate(prompts):
          row = {"prompt": p, "model_input": cd.model_input(p, template,
                                                              config.distill.preprompt),
                 "answer": samples.with_preprompt[i]}
          if keep is not None:
            row.update(answer_without=samples.without_preprompt[i], kept=bool(keep[i]),
                       score_with=float(scores["with"][i]),
                       score_without=float(scores["without"][i]))
          f.write(json.dumps(row, ensure_ascii=False) + "\n")
    figures.update(prompts=len(prompts), examples=len(examples),
                   targeted=keep is not None)
    train_summary = trainer.train(examples, config.train.steps, workdir)

  if eval_prompts:
    figures["refusal_rate_after"] = refusal_rate(
        make_sample_fn(cfg, trainer.policy_params(), tokenizer, greedy), eval_prompts,
        template, config.sampling.batch_size)
  outputs: dict[str, Any] = {}
  if distributed.is_primary():
    outputs.update(lora_lib.save_run_adapters(workdir, trainer.state.params, lcfg))
    atomic.write_json(workdir / "result.json",
                      {"figures": figures, "train": train_summary, "outputs": outputs})
  log.info("context distillation: %s", json.dumps(figures))
  return {"state": trainer.state, "samples": samples, "keep": keep, "figures": figures,
          "outputs": outputs}
