"""Rejection-sampling fine-tuning (Touvron et al., 2023, section 3.2.3): best of K, then SFT.

Each round draws K answers per prompt from the current policy (temperature sampling), scores
them with a reward function, keeps the highest-scoring answer of each prompt and fine-tunes
on those (prompt, best answer) pairs; the next round samples from the fine-tuned policy.

A reward function maps (prompts, answers) to one score per answer. `get_reward` gives one by
name: a saved reward-model directory (what the `reward` job writes to <workdir>/reward_model),
or one of the simple named rewards in `NAMED_REWARDS` (tests, sanity checks).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from alignment import schema
from alignment.answers.records import AnswerRecord
from alignment.data.records import InstructionExample
from alignment.evaluation import scorers
from alignment.reward import combine
from alignment.reward.scorer import text_rewards
from alignment.rl.generation import SampleFn, generate_in_batches
from alignment.rl.prompts import RLPrompt

RewardFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (prompts, answers) -> [N]


@dataclasses.dataclass(frozen=True)
class RoundsConfig:
  """N rounds of best-of-K and the reward that picks the best (a job's `rs` section).

  `reward`: a named reward, a saved reward-model directory, or 'combined' (Llama 2's rule
  over `safety_rm` and `helpfulness_rm`, prompts from `unsafe_sources` flagged unsafe).
  """

  rounds: int = 3
  num_samples: int = 4  # K
  reward: str = "length"
  reward_batch_size: int = 8
  use_min_reward: bool = False
  min_reward: float = 0.0  # with use_min_reward: prompts whose best reward is below it drop
  safety_rm: str = ""
  helpfulness_rm: str = ""
  unsafe_sources: tuple[str, ...] = ("safety_instructions",)
  safety_threshold: float = 0.15

  def __post_init__(self):
    for name in ("rounds", "num_samples"):
      if getattr(self, name) < 1:
        raise ValueError(f"rs.{name}={getattr(self, name)} must be >= 1")
    combine.check_threshold(self.safety_threshold, "rs.safety_threshold")

  @property
  def reward_floor(self) -> float | None:
    return self.min_reward if self.use_min_reward else None


def make_reward(cfg: RoundsConfig, prompts: Sequence[RLPrompt]) -> RewardFn:
  """The reward `cfg.reward` names; for 'combined', checked against the prompts' sources."""
  if cfg.reward != "combined":
    return get_reward(cfg.reward, cfg.reward_batch_size)
  if not (cfg.safety_rm and cfg.helpfulness_rm):
    raise ValueError("rs.reward='combined' needs rs.safety_rm and rs.helpfulness_rm (saved "
                     "reward-model directories, <reward workdir>/reward_model)")
  unsafe_sources = set(schema.names(cfg.unsafe_sources))
  unknown = unsafe_sources - {p.source for p in prompts}
  if unknown:
    raise ValueError(f"rs.unsafe_sources names {sorted(unknown)}, which no prompt came from "
                     f"(sources: {sorted({p.source for p in prompts})})")
  return combined_reward(
      get_reward(cfg.safety_rm, cfg.reward_batch_size),
      get_reward(cfg.helpfulness_rm, cfg.reward_batch_size),
      [p.text for p in prompts if p.source in unsafe_sources], cfg.safety_threshold)


@dataclasses.dataclass(frozen=True)
class Best:
  """The kept answer of one prompt, and what it was chosen from."""

  prompt: str
  answer: str
  reward: float
  index: int  # which of the K samples
  rewards: tuple[float, ...]  # all K scores


def sample_candidates(sample_fn: SampleFn, model_inputs: Sequence[str], num_samples: int,
                      batch_size: int, rng: jax.Array) -> list[list[str]]:
  """K answers per model input: [P][K], each input repeated K times within the batches."""
  if num_samples < 1:
    raise ValueError(f"num_samples (K) must be >= 1, got {num_samples}")
  if not model_inputs:
    raise ValueError("no prompts to sample from")
  flat = [x for x in model_inputs for _ in range(num_samples)]
  answers = generate_in_batches(sample_fn, flat, batch_size, rng)
  return [answers[i * num_samples:(i + 1) * num_samples] for i in range(len(model_inputs))]


def score_candidates(reward_fn: RewardFn, prompts: Sequence[str],
                     candidates: Sequence[Sequence[str]]) -> np.ndarray:
  """Rewards [P, K] of every candidate answer (one reward call over all of them)."""
  if len(prompts) != len(candidates):
    raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
  k = {len(c) for c in candidates}
  if len(k) != 1:
    raise ValueError(f"every prompt needs the same number of candidates; got {sorted(k)}")
  num = k.pop()
  flat_prompts = [p for p in prompts for _ in range(num)]
  flat_answers = [a for c in candidates for a in c]
  scores = np.asarray(reward_fn(flat_prompts, flat_answers), np.float64)
  if scores.shape != (len(flat_answers),):
    raise ValueError(f"the reward function returned shape {scores.shape} for "
                     f"{len(flat_answers)} answers")
  if not np.isfinite(scores).all():
    raise ValueError("the reward function returned non-finite scores")
  return scores.reshape(len(prompts), num)


def select_best(prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                rewards: np.ndarray) -> list[Best]:
  """The highest-reward candidate of each prompt (the first one on ties)."""
  rewards = np.asarray(rewards, np.float64)
  if rewards.shape != (len(prompts), len(candidates[0]) if candidates else 0):
    raise ValueError(f"rewards {rewards.shape} do not match {len(prompts)} prompts x "
                     f"{len(candidates[0]) if candidates else 0} candidates")
  best = np.argmax(rewards, axis=1)
  return [Best(p, candidates[i][int(j)], float(rewards[i, j]), int(j),
               tuple(float(x) for x in rewards[i]))
          for i, (p, j) in enumerate(zip(prompts, best))]


def training_examples(best: Sequence[Best], min_reward: float | None = None,
                      source: str = "rejection_sampling") -> list[InstructionExample]:
  """SFT examples (prompt -> best answer), dropping empty answers and, if set, low rewards."""
  return [InstructionExample(instruction=b.prompt, output=b.answer, source=source)
          for b in best if b.answer.strip() and (min_reward is None or b.reward >= min_reward)]


def sample_rows(best: Sequence[Best], candidates: Sequence[Sequence[str]]
                ) -> list[dict[str, Any]]:
  """A round's samples.jsonl rows: each prompt's candidates, their rewards and the kept one."""
  return [{"prompt": b.prompt, "candidates": list(c), "rewards": list(b.rewards),
           "best": b.index} for b, c in zip(best, candidates)]


# ----------------------------------------------------------------------------------------------
# Reward functions.


def _word_count(prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
  del prompts
  return np.asarray([len(a.split()) for a in answers], np.float64)


def _refusal(prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
  """1 for a full refusal, 0.5 partial, 0 compliance (the string-match refusal scorer)."""
  records = [AnswerRecord(set="rl", id=str(i), prompt=p, answer=a)
             for i, (p, a) in enumerate(zip(prompts, answers))]
  return np.asarray(scorers.refusal_scorer(records), np.float64)


NAMED_REWARDS: dict[str, RewardFn] = {
    "length": _word_count,  # longer answers win (a check that selection does something)
    "refusal": _refusal,  # refusals win (a crude safety reward for adversarial prompts)
    "compliance": lambda p, a: 1.0 - _refusal(p, a),
}


def reward_model_reward(directory: str | pathlib.Path, batch_size: int = 8) -> RewardFn:
  """Raw scores r(prompt, answer) of a saved reward model (`reward.scorer.text_rewards`)."""
  return text_rewards(directory, batch_size)


def combined_reward(safety: RewardFn, helpfulness: RewardFn, unsafe_prompts: Sequence[str],
                    threshold: float = 0.15) -> RewardFn:
  """Llama 2's rule (`alignment.reward.combine`): the safety score for a prompt in
  `unsafe_prompts` or whose safety sigmoid is below `threshold`, else the helpfulness score."""
  unsafe_set = frozenset(unsafe_prompts)

  def reward(prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    s = np.asarray(safety(prompts, answers), np.float64)
    h = np.asarray(helpfulness(prompts, answers), np.float64)
    flagged = np.array([p in unsafe_set for p in prompts], bool)
    return np.asarray(combine.combined_logit(s, h, flagged, threshold), np.float64)

  return reward


def get_reward(name: str, batch_size: int = 8) -> RewardFn:
  """A named reward (`NAMED_REWARDS`) or a saved reward-model directory."""
  if name in NAMED_REWARDS:
    return NAMED_REWARDS[name]
  if pathlib.Path(name).is_dir():
    return reward_model_reward(name, batch_size)
  raise ValueError(f"reward {name!r} is neither a named reward ({', '.join(NAMED_REWARDS)}) "
                   "nor a saved reward-model directory (<reward workdir>/reward_model)")
