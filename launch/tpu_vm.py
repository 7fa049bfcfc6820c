"""Starts runs on Cloud TPU VMs (single host or pod slice) with `gcloud`.

Steps, each one `gcloud compute tpus tpu-vm ...` command run on every worker of the slice:
  create  -> make the VM / slice
  copy    -> ship this checkout (git archive of HEAD) to all workers
  install -> create a venv and `pip install -e .` plus `jax[tpu]` on all workers
  run     -> `python -m alignment.main --config=...` on all workers at once (multi-host:
             set --config.distributed.initialize=True so each host joins the job)
  delete  -> release the VM
A `run` that ends preempted (exit 143: the job saved at SIGTERM and can resume) is started
again with the same command, up to `--max_restarts` times (`launch/restart.py`); this relies
on `gcloud ... ssh` returning the remote exit status. A slice that was itself deleted needs
`create,copy,install` again first.
`--dry_run` prints every command instead of running it (that is how the tests check them).

  python -m launch.tpu_vm --name=safety-sweep --zone=us-west4-a \
      --accelerator_type=v5litepod-8 --steps=create,copy,install,run \
      --config=configs/sft.py:gemma_2b --overrides="--config.data.num_safety=300" --dry_run
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Sequence

from absl import app
from absl import flags

from launch import restart

STEPS = ("create", "copy", "install", "run", "delete")

def define_flags() -> None:
  """Command-line flags; defined only when run as a script so imports stay side-effect free."""
  flags.DEFINE_string("name", None, "TPU VM (or slice) name.")
  flags.DEFINE_string("zone", None, "Cloud zone, e.g. us-west4-a.")
  flags.DEFINE_string("project", None, "Cloud project (default: gcloud's).")
  flags.DEFINE_string("accelerator_type", "v5litepod-8", "TPU type/topology.")
  flags.DEFINE_string("runtime_version", "v2-alpha-tpuv5-lite", "TPU VM image.")
  flags.DEFINE_bool("spot", False, "Ask for a preemptible (spot) slice.")
  flags.DEFINE_list("steps", ["create", "copy", "install", "run"], "Steps to run.")
  flags.DEFINE_string("config", "configs/sft.py", "Config for the `run` step.")
  flags.DEFINE_string("overrides", "", "Extra --config.* flags for `run`.")
  flags.DEFINE_string("remote_dir", "~/alignment", "Checkout dir on workers.")
  flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
  flags.DEFINE_integer("max_restarts", restart.DEFAULT_MAX_RESTARTS,
                       "Reruns of a `run` step that ended preempted (exit 143).")


def _gcloud(verb: str, name: str, zone: str, project: str | None, *extra: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, name, f"--zone={zone}"]
  if project:
    cmd.append(f"--project={project}")
  return cmd + list(extra)


def _ssh_all(name, zone, project, remote_command: str) -> list[str]:
  return _gcloud("ssh", name, zone, project, "--worker=all", f"--command={remote_command}")


def build_commands(steps: Sequence[str], *, name: str, zone: str, project: str | None = None,
                   accelerator_type: str = "v5litepod-8",
                   runtime_version: str = "v2-alpha-tpuv5-lite", spot: bool = False,
                   config: str = "configs/sft.py", overrides: str = "",
                   remote_dir: str = "~/alignment") -> list[list[str]]:
  """The gcloud/shell commands for `steps`, in order (pure: nothing is run)."""
  unknown = [s for s in steps if s not in STEPS]
  if unknown:
    raise ValueError(f"unknown launch step(s) {unknown}; known: {', '.join(STEPS)}")
  commands: list[list[str]] = []
  archive = "/tmp/alignment-src.tar.gz"
  for step in steps:
    if step == "create":
      extra = [f"--accelerator-type={accelerator_type}", f"--version={runtime_version}"]
      commands.append(_gcloud("create", name, zone, project, *extra, *(["--spot"] if spot else [])))
    elif step == "copy":
      commands.append(["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"])
      commands.append(_gcloud("scp", name, zone, project, "--worker=all", archive,
                              f"{name}:/tmp/alignment-src.tar.gz"))
      commands.append(_ssh_all(name, zone, project,
                               f"mkdir -p {remote_dir} && tar -xzf /tmp/alignment-src.tar.gz "
                               f"-C {remote_dir}"))
    elif step == "install":
      commands.append(_ssh_all(
          name, zone, project,
          f"cd {remote_dir} && python3 -m venv .venv && .venv/bin/pip install -q -U pip && "
          f".venv/bin/pip install -q -e . 'jax[tpu]'"))
    elif step == "run":
      run = (f"cd {remote_dir} && .venv/bin/python -m alignment.main "
             f"--config={shlex.quote(config)} --config.distributed.initialize=True {overrides}")
      commands.append(_ssh_all(name, zone, project, run.strip()))
    elif step == "delete":
      commands.append(_gcloud("delete", name, zone, project, "--quiet"))
  return commands


def is_run_step(cmd: Sequence[str]) -> bool:
  """Whether `cmd` (of `build_commands`) is the training run, the one step that resumes."""
  return any(part.startswith("--command=") and "alignment.main" in part for part in cmd)


def main(argv: Sequence[str]) -> None:
  del argv
  if not flags.FLAGS.name or not flags.FLAGS.zone:
    raise app.UsageError("--name and --zone are required")
  commands = build_commands(
      flags.FLAGS.steps, name=flags.FLAGS.name, zone=flags.FLAGS.zone, project=flags.FLAGS.project,
      accelerator_type=flags.FLAGS.accelerator_type, runtime_version=flags.FLAGS.runtime_version, spot=flags.FLAGS.spot,
      config=flags.FLAGS.config, overrides=flags.FLAGS.overrides, remote_dir=flags.FLAGS.remote_dir)
  for cmd in commands:
    print(shlex.join(cmd), flush=True)
    if flags.FLAGS.dry_run:
      continue
    if is_run_step(cmd):
      restart.check_run(cmd, flags.FLAGS.max_restarts)
    else:
      subprocess.run(cmd, check=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
