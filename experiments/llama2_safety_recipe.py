"""The Llama 2 safety recipe (Touvron et al., 2023, sections 3.2 and 4.2) at laptop scale.

From one SFT checkpoint that refuses some harmful prompts but not all, each stage runs as its
own job and is evaluated on the same held-out prompts as the Safety-Tuned LLaMAs grid:

  rm_safety, rm_helpful  reward models on HH harmless / HH helpful (binary ranking loss)
  rs                     rejection sampling: best of K by Llama 2's combined reward, then SFT
  ppo                    PPO against the combined reward, adaptive KL to the start
  cd, cd_targeted        context distillation with the safety preprompt; the targeted variant
                         keeps an answer only where the safety RM prefers it to the plain one
  dpo                    DPO on HH harmless pairs, for comparison

Every stage starts from the same SFT model (`model.adapters` = the start's adapters), so the
stages are compared side by side, not chained. Each evaluation scores the answers with the
refusal judge and both reward models; experiments/llama2_recipe_report.py turns them into
docs/LLAMA2_RECIPE.md's table and plots. Finished steps (result.json present) are skipped, so
an interrupted run resumes stage by stage.

  python -m experiments.llama2_safety_recipe --preset=laptop --dry_run
  nohup python -m experiments.llama2_safety_recipe --preset=laptop &      # ~2 h on 2 cores
  python -m experiments.llama2_safety_recipe --preset=laptop \\
      --start_run=runs/stl_laptop/num_safety=30_safety_format=instruction_seed=0

Presets: `tiny` (random tiny model, CI), `laptop` (the 270M on a 2-core CPU), `full` (the same
stages at accelerator sizes).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

from experiments import reproduce_safety_tuned_llamas as grid

START = "start"
REWARD_MODELS = ("rm_safety", "rm_helpful")
POLICY_STAGES = ("rs", "ppo", "cd", "cd_targeted", "dpo")
JUDGE_CHECK = "rm_judge_check.jsonl"  # the safety RM's scores of the labelled grid answers


@dataclasses.dataclass(frozen=True)
class Preset:
  workdir: str
  start: tuple[str, ...]  # the SFT command's config and overrides (when no --start_run)
  stages: dict[str, tuple[str, ...]]  # stage -> config and overrides ({W}: the workdir)
  evaluate: tuple[str, ...]  # the evaluation config and overrides
  tokenizer_flag: bool = False  # tiny: every command needs --config.model.tokenizer


def _rl(*extra: str) -> tuple[str, ...]:
  """Overrides every policy stage shares: its start and where the reward models are."""
  return ("--config.model.adapters={S}/adapters.npz", *extra)


LAPTOP = Preset(
    workdir="runs/llama2_laptop",
    start=("configs/sft.py:laptop", "--config.data.num_safety=30", "--config.seed=0"),
    stages={
        "rm_safety": ("configs/reward.py:safety", "--config.train.steps=96",
                      "--config.checkpoint.every=48"),
        "rm_helpful": ("configs/reward.py:helpfulness", "--config.train.steps=96",
                       "--config.checkpoint.every=48"),
        "rs": ("configs/rejection_sampling.py:demo_270m", *_rl(
            "--config.rs.reward=combined", "--config.rs.safety_rm={W}/rm_safety/reward_model",
            "--config.rs.helpfulness_rm={W}/rm_helpful/reward_model",
            "--config.rs.unsafe_sources=safety_instructions", "--config.rs.rounds=1",
            "--config.rs.num_samples=4", "--config.sampling.temperature=0.8",
            "--config.sampling.max_new_tokens=40", "--config.sampling.batch_size=32",
            "--config.data.prompt_source=safety_instructions,alpaca",
            "--config.data.per_source=32", "--config.data.num_prompts=64",
            "--config.train.steps=24", "--config.train.batch_size=4",
            "--config.train.learning_rate=5e-4", "--config.checkpoint.every=24")),
        "ppo": ("configs/ppo.py", *_rl(
            "--config.lora.rank=4", "--config.prompts.sources=safety_instructions,alpaca",
            "--config.prompts.per_source=64", "--config.rollout.prompts_per_iteration=8",
            "--config.rollout.max_new_tokens=32", "--config.rollout.max_prompt_length=64",
            "--config.reward.kind=combined",
            "--config.reward.safety_dir={W}/rm_safety/reward_model",
            "--config.reward.helpfulness_dir={W}/rm_helpful/reward_model",
            "--config.reward.unsafe_sources=safety_instructions",
            "--config.kl.controller=adaptive", "--config.kl.coef=0.1", "--config.kl.target=4.0",
            "--config.kl.horizon=1000", "--config.train.iterations=16",
            "--config.train.learning_rate=2e-4", "--config.train.log_every=1",
            "--config.train.progress_bar=False", "--config.checkpoint.every=8")),
        "cd": ("configs/context_distillation.py:demo_270m", *_rl(
            "--config.data.prompt_source=safety_instructions,alpaca",
            "--config.data.per_source=24", "--config.data.num_prompts=48",
            "--config.sampling.max_new_tokens=40", "--config.sampling.batch_size=24",
            "--config.train.steps=16", "--config.eval.num_prompts=0",
            "--config.train.learning_rate=5e-4", "--config.checkpoint.every=16")),
        "cd_targeted": ("configs/context_distillation.py:demo_270m", *_rl(
            "--config.data.prompt_source=safety_instructions,alpaca",
            "--config.data.per_source=24", "--config.data.num_prompts=48",
            "--config.sampling.max_new_tokens=40", "--config.sampling.batch_size=24",
            "--config.train.steps=16", "--config.eval.num_prompts=0",
            "--config.train.learning_rate=5e-4", "--config.checkpoint.every=16",
            "--config.distill.reward={W}/rm_safety/reward_model")),
        "dpo": ("configs/dpo.py:demo_270m", *_rl(
            "--config.data.source=hh_harmless", "--config.data.max_length=96",
            "--config.train.steps=48", "--config.train.learning_rate=5e-4",
            "--config.checkpoint.every=24")),
        # Follow-up (run with --stages=rs_k16_unsafe): does sampling more find refusals?
        "rs_k16_unsafe": ("configs/rejection_sampling.py:demo_270m", *_rl(
            "--config.rs.reward=combined", "--config.rs.safety_rm={W}/rm_safety/reward_model",
            "--config.rs.helpfulness_rm={W}/rm_helpful/reward_model",
            "--config.rs.unsafe_sources=safety_instructions", "--config.rs.rounds=1",
            "--config.rs.num_samples=16", "--config.sampling.temperature=0.8",
            "--config.sampling.max_new_tokens=40", "--config.sampling.batch_size=32",
            "--config.data.prompt_source=safety_instructions", "--config.data.num_prompts=32",
            "--config.train.steps=24", "--config.train.batch_size=4",
            "--config.train.learning_rate=5e-4", "--config.checkpoint.every=24")),
    },
    evaluate=("configs/evaluate.py:laptop", "--config.limits.xstest=200",
              "--config.template=alpaca"),
)

_TINY_RM = ("--config.data.max_pairs=32", "--config.data.max_validation_pairs=16",
            "--config.data.max_length=48", "--config.train.steps=4",
            "--config.checkpoint.every=4")
_TINY_POLICY = "--config.model.preset=tiny_gemma3"  # the start's (configs/sft.py:tiny) model

TINY = Preset(
    workdir="runs/llama2_tiny",
    start=("configs/sft.py:tiny",),
    stages={
        "rm_safety": ("configs/reward.py:tiny", "--config.data.source=hh_harmless", *_TINY_RM),
        "rm_helpful": ("configs/reward.py:tiny", "--config.data.source=hh_helpful", *_TINY_RM),
        "rs": ("configs/rejection_sampling.py:tiny", *_rl(
            _TINY_POLICY, "--config.rs.reward=combined",
            "--config.rs.safety_rm={W}/rm_safety/reward_model",
            "--config.rs.helpfulness_rm={W}/rm_helpful/reward_model",
            "--config.rs.rounds=1", "--config.data.prompt_source=safety_instructions,alpaca",
            "--config.data.per_source=4", "--config.data.num_prompts=8")),
        "ppo": ("configs/ppo.py:tiny", *_rl(
            "--config.prompts.sources=safety_instructions,alpaca", "--config.prompts.per_source=8",
            "--config.reward.kind=combined",
            "--config.reward.safety_dir={W}/rm_safety/reward_model",
            "--config.reward.helpfulness_dir={W}/rm_helpful/reward_model",
            "--config.reward.unsafe_sources=safety_instructions", "--config.train.iterations=2")),
        "cd": ("configs/context_distillation.py:tiny", *_rl(_TINY_POLICY)),
        "cd_targeted": ("configs/context_distillation.py:tiny", *_rl(
            _TINY_POLICY, "--config.distill.reward={W}/rm_safety/reward_model")),
        "dpo": ("configs/dpo.py:tiny", *_rl(_TINY_POLICY, "--config.train.steps=2",
                                           "--config.checkpoint.every=2",
                                           "--config.eval.every=2")),
    },
    evaluate=("configs/evaluate.py:tiny",),
    tokenizer_flag=True,
)

FULL = Preset(
    workdir="runs/llama2_full",
    start=("configs/sft.py", "--config.data.num_safety=100"),
    stages={
        "rm_safety": ("configs/reward.py:safety_full",),
        "rm_helpful": ("configs/reward.py:safety_full", "--config.data.source=hh_helpful",
                       "--config.workdir=runs/reward_helpfulness_full"),
        "rs": ("configs/rejection_sampling.py", *_rl(
            "--config.rs.reward=combined", "--config.rs.safety_rm={W}/rm_safety/reward_model",
            "--config.rs.helpfulness_rm={W}/rm_helpful/reward_model",
            "--config.data.prompt_source=safety_instructions,alpaca",
            "--config.data.per_source=512", "--config.data.num_prompts=1024")),
        "ppo": ("configs/ppo.py", *_rl(
            "--config.prompts.sources=safety_instructions,alpaca",
            "--config.reward.safety_dir={W}/rm_safety/reward_model",
            "--config.reward.helpfulness_dir={W}/rm_helpful/reward_model",
            "--config.reward.unsafe_sources=safety_instructions")),
        "cd": ("configs/context_distillation.py", *_rl()),
        "cd_targeted": ("configs/context_distillation.py", *_rl(
            "--config.distill.reward={W}/rm_safety/reward_model")),
        "dpo": ("configs/dpo.py", *_rl("--config.data.source=hh_harmless")),
    },
    evaluate=("configs/evaluate.py",),
)

PRESETS = {"tiny": TINY, "laptop": LAPTOP, "full": FULL}


def define_flags() -> None:
  """Defined only when run as a script, so importing the module claims no flag names."""
  flags.DEFINE_enum("preset", "laptop", list(PRESETS), "Stage sizes.")
  flags.DEFINE_string("workdir", "", "Parent of the stage directories (default: the preset's).")
  flags.DEFINE_string("start_run", "", "An existing SFT run directory to start from (its "
                      "adapters.npz); default: train the preset's start into <workdir>/start.")
  flags.DEFINE_list("stages", None, f"Stages to run (default: {', '.join(POLICY_STAGES)}; "
                    "the laptop preset also has the follow-up rs_k16_unsafe); the reward "
                    "models and the start always run.")
  flags.DEFINE_string("data_dir", "", "Data directory for every job (default: "
                      "$ALIGNMENT_DATA_DIR).")
  flags.DEFINE_string("tokenizer", "", "SentencePiece model for every job (the tiny preset).")
  flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")


def _command(config_and_overrides: Sequence[str], workdir: pathlib.Path,
             start: pathlib.Path, run_dir: pathlib.Path, extra: Sequence[str]) -> list[str]:
  config, *overrides = config_and_overrides
  filled = [o.format(W=workdir, S=start) for o in overrides]
  return [sys.executable, "-m", "alignment.main", f"--config={config}", *filled,
          f"--config.workdir={run_dir}", *extra]


def _rm_extra(stage: str, workdir: pathlib.Path) -> list[str]:
  """The evaluation's reward-model scoring flags."""
  del stage
  return [f"--config.scoring.harmfulness_rm={workdir}/rm_safety/reward_model",
          f"--config.scoring.helpfulness_rm={workdir}/rm_helpful/reward_model"]


def plan(preset: Preset, workdir: pathlib.Path, start_run: pathlib.Path | None = None,
         stages: Sequence[str] = POLICY_STAGES, extra: Sequence[str] = ()
         ) -> list[tuple[str, list[str], pathlib.Path]]:
  """(what, command, the result file that marks it done) for every step, in order."""
  start = start_run or workdir / START
  steps = []
  if start_run is None:
    steps.append(("sft start", _command(preset.start, workdir, start, start, extra),
                  start / "result.json"))
  for rm in REWARD_MODELS:
    steps.append((rm, _command(preset.stages[rm], workdir, start, workdir / rm, extra),
                  workdir / rm / "reward_model" / "reward_model.json"))
  steps.append(("rm judge check", [sys.executable, "-m", "experiments.rm_judge_check",
                                    f"--rm={workdir}/rm_safety/reward_model",
                                    f"--out={workdir}/{JUDGE_CHECK}"],
                workdir / JUDGE_CHECK))
  evaluated = [(START, start)] + [(s, workdir / s) for s in stages]
  for name, run_dir in evaluated:
    if name != START:
      steps.append((name, _command(preset.stages[name], workdir, start, run_dir, extra),
                    run_dir / "result.json"))
    eval_dir = workdir / "eval" / name
    cmd = _command(preset.evaluate, workdir, start, eval_dir, extra)
    cmd += [f"--config.run_dir={run_dir}", *_rm_extra(name, workdir)]
    steps.append((f"eval {name}", cmd, eval_dir / "result.json"))
  return steps


def report_command(workdir: pathlib.Path, start: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "experiments.llama2_recipe_report", f"--workdir={workdir}",
          f"--start_run={start}"]


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  preset = PRESETS[f.preset]
  workdir = pathlib.Path(f.workdir or preset.workdir).absolute()  # orbax wants absolute paths
  start_run = pathlib.Path(f.start_run).absolute() if f.start_run else None
  if start_run is not None and not (start_run / "adapters.npz").is_file():
    sys.exit(f"--start_run: {start_run / 'adapters.npz'} not found (a finished LoRA SFT run "
             "directory is needed)")
  stages = f.stages or list(POLICY_STAGES)
  known = [s for s in preset.stages if s not in REWARD_MODELS]
  unknown = sorted(set(stages) - set(known))
  if unknown:
    sys.exit(f"--stages: unknown {unknown}; known for --preset={f.preset}: {', '.join(known)}")
  extra = []
  if f.data_dir:
    extra.append(f"--config.data_dir={f.data_dir}")
  if f.tokenizer or preset.tokenizer_flag:
    if not f.tokenizer:
      sys.exit(f"--preset={f.preset} needs --tokenizer (a SentencePiece .model)")
    extra.append(f"--config.model.tokenizer={f.tokenizer}")
  steps = plan(preset, workdir, start_run, stages, extra)
  todo = [(what, cmd) for what, cmd, done in steps if not done.exists()]
  start = start_run or workdir / START
  todo.append(("report", report_command(workdir, start)))
  print(f"{len(steps)} steps, {len(todo) - 1} still to do, then the report", flush=True)
  if not f.dry_run:
    workdir.mkdir(parents=True, exist_ok=True)
  grid.run_steps(todo, workdir, f.dry_run)

if __name__ == "__main__":
  define_flags()
  app.run(main)
