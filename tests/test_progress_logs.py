"""Progress without a bar: the training log line's ETA and the evaluation's answers/s, on a
fake clock so every figure is exact."""

from __future__ import annotations

import pytest

from alignment.evaluation.generation import AnswerProgress
from alignment.training import metrics


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_format_duration():
  assert [metrics.format_duration(s) for s in (0, 7.4, 59.6, 61, 3600 + 62, -3)] == [
      "0s", "7s", "1:00", "1:01", "1:01:02", "0s"]


def test_progress_line_names_loss_rate_and_eta_first():
  line = metrics.progress_line(40, 100, {"loss": 2.3456, "tokens_per_sec": 15200.4,
                                         "grad_norm": 0.81, "note": "x"}, 65)
  assert line == "step 40/100: loss=2.346 tokens/s=15,200 eta=1:05 | grad_norm=0.81"
  assert metrics.progress_line(3, 9, {"eval_loss": 6.4}, None) == "step 3/9: | eval_loss=6.4"


def test_eta_uses_wall_clock_since_the_first_line(monkeypatch, caplog):
  clock = Clock()
  monkeypatch.setattr(metrics.time, "perf_counter", clock)
  caplog.set_level("INFO", logger=metrics.log.name)
  logger = metrics.MetricsLogger(None, total_steps=10, progress_bar=False)
  logger.log(2, {"loss": 1.0, "steps_per_sec": 4.0})  # first line: the loop's own rate
  clock.now += 6.0  # 3 steps in 6 s, hooks and saves included: 0.5 steps/s
  logger.log(5, {"loss": 0.5, "steps_per_sec": 4.0})
  logger.log(5, {"eval_loss": 0.7})  # a hook's scalars: a line, no ETA
  lines = [r.getMessage() for r in caplog.records]
  assert lines == ["step 2/10: loss=1 eta=2s | steps_per_sec=4",
                   "step 5/10: loss=0.5 eta=10s | steps_per_sec=4",
                   "step 5/10: | eval_loss=0.7"]
  caplog.clear()
  quiet = metrics.MetricsLogger(None, total_steps=10, progress_bar=False, log_lines=False)
  quiet.log(1, {"loss": 1.0})
  assert not caplog.records


def test_answer_progress_rate_and_eta():
  clock, lines = Clock(), []
  progress = AnswerProgress(num_prompts=10, batch_size=4, emit=lines.append, clock=clock)
  clock.now += 8.0  # first batch (compilation included): 4 answers in 8 s
  progress(1, 3)
  clock.now += 2.0  # second batch: 4 answers in 2 s, measured from the first's end
  progress(2, 3)
  clock.now += 1.0
  progress(3, 3)  # the last batch holds the 2 remaining prompts
  assert lines == ["answered batch 1/3 (4/10 prompts), 0.5 answers/s, eta 12s",
                   "answered batch 2/3 (8/10 prompts), 2 answers/s, eta 1s",
                   "answered batch 3/3 (10/10 prompts), 2 answers/s, eta 0s"]
  with pytest.raises(TypeError):
    AnswerProgress(10)  # the batch size is needed to count answers
