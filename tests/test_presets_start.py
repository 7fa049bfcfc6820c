"""Every preset of every job starts: its config builds, its data loads at the preset's real
sizes and sources, and its first batch goes through the lowering of its train step.

Presets are discovered from each configs/*.py (the strings `get_config` compares `preset`
with), so a new preset is covered without editing this file. The model is swapped for the
random tiny one of its family (and a tiny SentencePiece tokenizer) so that a preset meant for
an accelerator starts in seconds; everything else is the preset's own. Where a preset needs
another run's output (saved reward models), a named reward stands in. Training jobs stop at
the first call of their jitted step (`training.step.jit_train_step`): the real first batch,
placed on the mesh, is lowered (`jax.jit(...).lower`, no compilation) and checked; evaluation
and generation jobs (evaluate, template_eval, generate, salience) stop at their first call of
the sampler, with every set loaded and every prompt formatted. Jobs that train on their own
samples (rejection sampling, distillation, the demo's before/after answers) get a fixed
answer from the sampler instead of generating: hundreds of prompts of many lengths would
compile as many shapes, and sampling itself is tested with each job's tiny preset. PPO's
rollout does sample (one batch), and an evaluation before training (DPO's `eval.at_start`)
is turned off.
"""

from __future__ import annotations

import ast
import importlib
import json
import pathlib

import jax
import numpy as np
import pytest

from alignment.checkpoints.embedded import embedded_gguf_path
from alignment.checkpoints.gguf_tokenizer import tokenizer_from_gguf
from alignment.rl import ppo_trainer
from alignment.sampling import sampler as sampler_lib
from alignment.tokenizer import Tokenizer
from alignment.training import distributed
from alignment.training import step as step_lib
from tiny_sentencepiece import train_tiny_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "__init__")
# A named reward standing in for saved reward models another run would have written.
NAMED_REWARDS = {"rs.reward": "length", "ppo.reward.kind": "token_fraction"}
FIXED_ANSWER = "I'm sorry, but I cannot help with that request because it could cause harm."


def presets_of(name: str) -> list[str | None]:
  """The presets configs/<name>.py knows: the constants `preset` is compared with in
  `get_config` (==, in), the keys of a dict it is looked up in, and get_config's default."""
  module = importlib.import_module(f"configs.{name}")
  tree = ast.parse((REPO / "configs" / f"{name}.py").read_text())
  (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                 and n.name == "get_config"]
  found: list[str | None] = []
  if function.args.defaults:
    found.append(ast.literal_eval(function.args.defaults[-1]))
  for node in ast.walk(function):
    if not (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
            and node.left.id == "preset"):
      continue
    for comparator in node.comparators:
      if isinstance(comparator, ast.Name):  # `preset not in _PRESETS`
        found += list(getattr(module, comparator.id))
      elif isinstance(comparator, (ast.Tuple, ast.List, ast.Set)):
        found += [ast.literal_eval(e) for e in comparator.elts]
      elif isinstance(comparator, ast.Constant):
        found.append(comparator.value)
  unique = list(dict.fromkeys(found))
  # Names of one config (None and "default", say) are run once.
  configs = {}
  for preset in unique:
    configs.setdefault(module.get_config(preset).to_json_best_effort(sort_keys=True), preset)
  return list(configs.values())


# `export` starts from a finished run's directory, not a model: tests/test_export.py runs it.
FROM_A_RUN = {"export"}
CASES = [(name, preset) for name in CONFIGS for preset in presets_of(name)]
START_CASES = [(name, preset) for name, preset in CASES if name not in FROM_A_RUN]


def test_presets_are_discovered_and_unknown_ones_refused():
  found = dict.fromkeys(CONFIGS)
  for name, preset in CASES:
    found[name] = (found[name] or []) + [preset]
  assert all(found.values()), found  # every config has at least its default
  assert {"paper_270m", "gemma_2b", "gemma_7b", "demo", "laptop", "tiny"} <= set(found["sft"])
  assert {"safety_full", "tiny"} <= set(found["reward"])
  for name in CONFIGS:
    module = importlib.import_module(f"configs.{name}")
    with pytest.raises(ValueError, match="no_such_preset"):
      module.get_config("no_such_preset")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, str]:
  """.model files: the tiny SentencePiece one (tiny presets) and the embedded Gemma 3's (every
  other preset: its prompts tokenize, fit length limits and pack as with the real model)."""
  directory = tmp_path_factory.mktemp("tok")
  train_tiny_tokenizer(directory)
  gemma = directory / "gemma3.model"
  gemma.write_bytes(tokenizer_from_gguf(embedded_gguf_path()).serialized_proto())
  return {"tiny": str(directory / "tiny_sp.model"), "real": str(gemma)}


def tiny_model_preset(preset: str) -> str:
  """The random tiny model of a preset's family (Gemma 1, 2 or 3)."""
  if preset.startswith("tiny_"):
    return preset
  if preset.startswith("gemma3") or preset.startswith("gemma2"):
    return f"tiny_{preset[:6]}"
  return "tiny_gemma1"


def tiny_config(name: str, preset: str | None, tmp_path, tokenizers: dict, data_dir):
  config = importlib.import_module(f"configs.{name}").get_config(preset)
  tiny = config.model.preset.startswith("tiny_")
  tokenizer = tokenizers["tiny" if tiny else "real"]
  flat = {}
  if "workdir" in config:
    flat["workdir"] = str(tmp_path / "run")
  if "data_dir" in config:
    flat["data_dir"] = str(data_dir)
  if "out" in config:
    flat["out"] = str(tmp_path / "out.html")
  model = config.model
  flat.update({"model.checkpoint": "random", "model.tokenizer": tokenizer,
               "model.preset": tiny_model_preset(model.preset)})
  if "rs" in config and config.rs.reward not in ("length", "refusal", "compliance"):
    flat["rs.reward"] = NAMED_REWARDS["rs.reward"]
  if config.job == "ppo" and config.reward.kind != "token_fraction":
    flat.update({"reward.kind": NAMED_REWARDS["ppo.reward.kind"], "reward.token": "0"})
  if "eval" in config and "at_start" in config.eval:
    flat["eval.at_start"] = False
  config.update_from_flattened_dict(flat)
  return config


class Started(Exception):
  """Raised at the point a preset has shown it starts."""


def leaves(tree) -> list[np.ndarray]:
  return [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]


@pytest.mark.parametrize("name, preset", START_CASES, ids=[f"{n}:{p}" for n, p in START_CASES])
def test_every_preset_starts(name, preset, tmp_path, tokenizers, data_dir, monkeypatch):
  config = tiny_config(name, preset, tmp_path, tokenizers, data_dir)
  seen: dict = {}

  def lowering_only(*args, **kwargs):
    jitted = jit_train_step(*args, **kwargs)

    def first_step(state, batch):
      seen["batch"] = jax.tree.map(np.asarray, batch)
      seen["lowered"] = jitted.lower(state, batch)
      raise Started

    return first_step

  jit_train_step = step_lib.jit_train_step
  monkeypatch.setattr(step_lib, "jit_train_step", lowering_only)
  trains = "train" in config

  def no_generation(self, prompts, max_new_tokens, *args, **kwargs):
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seen.setdefault("sampled", []).append((prompts, max_new_tokens))
    if not trains:
      raise Started
    zeros = np.zeros((len(prompts), 1), np.int32)
    return sampler_lib.SampleOutput(zeros, zeros[:, 0], text=[FIXED_ANSWER] * len(prompts))

  monkeypatch.setattr(sampler_lib.Sampler, "__call__", no_generation)

  # PPO: rollouts of the eos token (no sampling); the score pass is lowered at the rollout's
  # shapes, and run (to reach the update step) only where the vocabulary is small: with the
  # real 262k vocabulary its logits would take gigabytes.
  def eos_rollout(cfg, params, prompt_tokens, prompt_mask, rng, max_new_tokens, *args,
                  **kwargs):
    rows = prompt_tokens.shape[0]
    tokens = np.full((rows, max_new_tokens), seen["eos"], np.int32)
    return sampler_lib.SampleOutput(tokens, np.ones(rows, np.int32),
                                    np.zeros((rows, max_new_tokens), np.float32))

  score = ppo_trainer.PPOTrainer.score

  def lowered_score(self, state, rollout, kl_coef):
    batch = distributed.global_batch(rollout["batch"], self.mesh)
    seen["score"] = jax.jit(self.score_fn).lower(state.params, self.reference_params, batch)
    if self.model_config.vocab_size > 4096:
      raise Started
    return score(self, state, rollout, kl_coef)

  if config.job == "ppo":
    seen["eos"] = Tokenizer.from_model_file(config.model.tokenizer).eos_id
    monkeypatch.setattr(ppo_trainer, "generate", eos_rollout)
    monkeypatch.setattr(ppo_trainer.PPOTrainer, "score", lowered_score)
  module = importlib.import_module(f"alignment.jobs.{config.job}")
  with pytest.raises(Started):
    module.run(config)
  if not trains:  # stopped at its first generation: every set/prompt loaded and formatted
    ((prompts, max_new_tokens),) = seen["sampled"]
    assert prompts and all(isinstance(p, str) and p.strip() for p in prompts)
    assert max_new_tokens == config.max_new_tokens
    return
  if config.job == "ppo" and "batch" not in seen:  # stopped after lowering its score pass
    assert "func" in seen["score"].as_text()
    return
  batch = leaves(seen["batch"])
  rows = {x.shape[0] for x in batch}
  assert len(rows) == 1, {k: v.shape for k, v in seen["batch"].items()}
  if config.job == "ppo":
    r = config.rollout
    assert rows == {r.prompts_per_iteration * r.samples_per_prompt // config.ppo.num_minibatches}
  else:
    assert rows == {config.train.batch_size * config.train.get("grad_accum_steps", 1)} or (
        rows == {config.train.batch_size})
    assert max(x.shape[1] for x in batch if x.ndim > 1) <= config.data.max_length
  paths = {jax.tree_util.keystr(p): x for p, x in
           jax.tree_util.tree_flatten_with_path(seen["batch"])[0]}
  masks = {k: v for k, v in paths.items() if "mask" in k and "input_mask" not in k}
  assert masks and all(m.sum() > 0 for m in masks.values()), sorted(paths)  # something to learn
  text = seen["lowered"].as_text()
  assert "func" in text and len(text) > 1000
  if config.job in ("sft", "demo"):  # written before training: the preset's real mixture
    mixture = json.loads((tmp_path / "run" / "mixture.json").read_text())
    d = config.data
    assert mixture["num_base"] == d.num_base + d.eval_examples
