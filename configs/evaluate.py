"""Safety evaluation: answer every evaluation set, score the answers, write the run report.

  python -m alignment.main --config=configs/evaluate.py                       # base 270M
  python -m alignment.main --config=configs/evaluate.py \\
      --config.run_dir=runs/safety_sweep/num_safety=300_safety_format=instruction_seed=0 \\
      --config.workdir=runs/safety_sweep/num_safety=300_safety_format=instruction_seed=0/eval
  python -m alignment.main --config=configs/evaluate.py:quick                 # CPU smoke run
  python -m alignment.main --config=configs/evaluate.py:quick --config.attacks=all  # red-teaming

The model is `model` (+ `adapters`, a LoRA .npz), or the model and adapters of the SFT run in
`run_dir`. Scores: refusal always; harmfulness / helpfulness when `scoring.harmfulness_rm` /
`scoring.helpfulness_rm` name saved reward models (<reward workdir>/reward_model).
`attacks` names red-teaming vectors (docs/ATTACKS.md) applied to the unsafe prompts of
`attack_sets` and reported per vector next to the baseline; `quantize` evaluates the weights
after an int8/int4 round trip.

Presets:
  default  every set in full (the paper's seven sets + XSTest v2), 256 new tokens, greedy.
  quick    3 prompts per set, 24 new tokens: a few-minute smoke run of the 270M on a CPU.
  laptop   30 prompts per paper set (seeded draw) + all of XSTest v2, 40 new tokens.
  tiny     random tiny model (built-in tiny tokenizer), 2 prompts per set, 4 new tokens.
"""

from __future__ import annotations

import ml_collections

from alignment.data.sources import EVAL_SOURCES, PAPER_EVAL_SOURCES
from alignment.jobs import sections

DEFAULT_SETS = (*PAPER_EVAL_SOURCES, "xstest")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "evaluate"
  c.workdir = "runs/evaluate"
  c.data_dir = ""  # '' -> $ALIGNMENT_DATA_DIR
  c.seed = 0
  c.model = sections.model()  # checkpoint='embedded', preset='gemma3_270m', dtype='float32'
  c.adapters = ""  # a LoRA adapters .npz applied on top of `model` ('' = none)
  c.run_dir = ""  # an SFT run directory: its config.json's model + its adapters.npz
  # Evaluation source names and/or files of your own (.csv/.jsonl/.json/.parquet with a
  # prompt column, optional label safe|unsafe, category, id), each reported under its stem;
  # `columns` renames a file's columns first, e.g. "goal:prompt". A tuple of names; a command
  # line may give `--config.sets=xstest,/path/probes.csv`.
  c.sets = DEFAULT_SETS
  c.columns = ""
  c.max_prompts_per_set = 0  # 0 = all; otherwise N of each set (the first N, or see sample_seed)
  # Per-set overrides of max_prompts_per_set: -1 = max_prompts_per_set, 0 = all, N = N.
  c.limits = ml_collections.ConfigDict({name: -1 for name in EVAL_SOURCES})
  c.sample_seed = -1  # >= 0: each set's N prompts are a random subset drawn with this seed
  c.template = ""  # "" = the SFT run's template (run_dir), else alpaca (the paper's); or "none"
  c.max_new_tokens = 256
  c.batch_size = 32
  c.temperature = 0.0  # 0: greedy
  c.top_k = 0
  c.top_p = 1.0
  # Red-teaming: vectors of alignment.evaluation.attacks (() = none, ("all",) = every one):
  # role_play, authority, false_premise, hypothetical, misspelling, leetspeak,
  # prefix_injection. A command line may give `--config.attacks=role_play,leetspeak`.
  c.attacks = ()
  # Which sets' unsafe-labelled prompts are attacked: 'unsafe' = every evaluated set (the
  # paper's unsafe sets and XSTest's unsafe prompts), or names from `sets` (`a,b` on a command
  # line).
  c.attack_sets = ("unsafe",)
  c.quantize = ""  # '' | 'int8' | 'int4': weight round trip after loading (adapters merged)
  c.scoring = ml_collections.ConfigDict(dict(
      harmfulness_rm="",  # saved safety reward model dir ('' = no harmfulness score)
      harmfulness_kind="probability",  # 'probability' (1 - sigmoid r) | 'negative_reward'
      helpfulness_rm="",  # saved helpfulness reward model dir ('' = no helpfulness score)
      batch_size=8))

  if preset is None:
    pass
  elif preset == "quick":
    c.workdir = "runs/evaluate_quick"
    c.max_prompts_per_set = 3
    c.max_new_tokens = 24
    c.batch_size = 8
  elif preset == "laptop":
    # The laptop reproduction's evaluation: 30 prompts of each paper set (a fixed random draw),
    # all 450 XSTest v2 prompts, 40 greedy tokens; ~4 min for the 270M on a 2-core CPU.
    c.workdir = "runs/stl_laptop/eval"
    c.max_prompts_per_set = 30
    c.limits.xstest = 0
    c.sample_seed = 0
    c.max_new_tokens = 40
  elif preset == "tiny":
    c.workdir = "runs/evaluate_tiny"
    c.model = sections.model(checkpoint="random", preset="tiny_gemma3")
    c.model.tokenizer = "tiny"  # the built-in 600-piece SentencePiece model
    c.max_prompts_per_set = 2
    c.max_new_tokens = 4
    c.batch_size = 4
  else:
    raise ValueError(f"unknown evaluate preset {preset!r}; known: quick, laptop, tiny (or none)")
  return c
