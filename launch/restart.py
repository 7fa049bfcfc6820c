"""Runs a command again when it was preempted, so a spot VM going away costs a restart only.

A run stopped by SIGTERM saves a checkpoint at the next step boundary, writes summary.json
with "status": "preempted" and exits with 128 + SIGTERM = 143 (`alignment.main`,
`training/preemption.py`); a process killed by SIGTERM before its loop started dies of the
signal (a subprocess return code of -15). Either way the same command resumes it. Any other
non-zero exit (a bad config, a crash, Ctrl-C's 130) is returned at once: rerunning would
fail the same way or undo what the user asked for.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

PREEMPTED_CODES = (128 + signal.SIGTERM, -signal.SIGTERM)
DEFAULT_MAX_RESTARTS = 3


def preempted(returncode: int, workdir: str | pathlib.Path | None = None) -> bool:
  """Whether a run that ended with `returncode` was preempted (and so can resume). With a
  `workdir`, exit 143 counts only if its summary.json says "preempted" too (a program that
  exits 143 for another reason is not rerun)."""
  if returncode not in PREEMPTED_CODES:
    return False
  if workdir is None or returncode < 0:
    return True
  try:
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return False
  return isinstance(summary, dict) and summary.get("status") == "preempted"


def run(command: Sequence[str], max_restarts: int = DEFAULT_MAX_RESTARTS,
        workdir: str | pathlib.Path | None = None, delay_s: float = 0.0,
        **popen) -> int:
  """Runs `command`; while it ends preempted (see `preempted`), runs it again, at most
  `max_restarts` times. Returns the last return code (0 when it finished)."""
  if max_restarts < 0:
    raise ValueError(f"max_restarts={max_restarts}: must be >= 0")
  attempt = 0
  while True:
    returncode = subprocess.run(list(command), check=False, **popen).returncode
    if returncode == 0 or not preempted(returncode, workdir):
      return returncode
    if attempt == max_restarts:
      print(f"restart: preempted (exit {returncode}) {attempt + 1} time(s); giving up after "
            f"{max_restarts} restart(s)", file=sys.stderr, flush=True)
      return returncode
    attempt += 1
    print(f"restart: preempted (exit {returncode}); restart {attempt} of {max_restarts} of "
          "the same command", file=sys.stderr, flush=True)
    time.sleep(delay_s)


def check_run(command: Sequence[str], max_restarts: int = DEFAULT_MAX_RESTARTS,
              workdir: str | pathlib.Path | None = None, **popen) -> None:
  """`run`, raising subprocess.CalledProcessError when the command did not finish."""
  returncode = run(command, max_restarts, workdir, **popen)
  if returncode != 0:
    raise subprocess.CalledProcessError(returncode, list(command))
