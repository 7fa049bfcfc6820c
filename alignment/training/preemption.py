"""SIGTERM / SIGINT as a request to stop at the next step boundary.

A preemptible VM gets SIGTERM some seconds before it goes; the default action kills the
process and loses every step since the last periodic checkpoint. While `StopSignals` is
active, the first SIGTERM or SIGINT only records itself; the training loop then saves, writes
its summary and raises `Preempted`. A second SIGINT interrupts at once (Ctrl-C twice).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(RuntimeError):
  """Training stopped on a signal after saving; rerunning the same command resumes it."""

  def __init__(self, signum: int, step: int, checkpoint_step: int | None):
    self.signum = signum
    self.step = step
    self.checkpoint_step = checkpoint_step
    super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint "
                     f"step {checkpoint_step} saved; rerun the same command to resume")


class StopSignals:
  """Context manager: `.received` is the first stop signal's number, or None."""

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, object] = {}

  def _handle(self, signum, frame) -> None:
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = self.received or signum
    log.warning("%s received: stopping after this step (with a checkpoint)",
                signal.Signals(signum).name)

  def __enter__(self) -> StopSignals:
    # Handlers can only be set from the main thread; elsewhere signals keep their defaults.
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
