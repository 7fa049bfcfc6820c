"""The run's record and its clock: every item is checked against the time left before it
starts, timed, and written to disk as soon as it ends, so a run cut short (the device's
10-minute limit, a crash) still leaves every finished figure behind.

Statuses: pending (planned), running, done, skipped (with the reason: budget, missing
package or weights), error (with the exception; the run goes on).
"""

from __future__ import annotations

import json
import pathlib
import time
import traceback
from typing import Any, Callable

from experiments.accelerator import report

PHASES = ("ceilings", "train", "sampling", "vs_pytorch", "reproduction")
TITLES = {"ceilings": "1. device ceilings (bf16 matmul, copy bandwidth)",
          "train": "2. training MFU, bf16 (LoRA and full fine-tuning)",
          "sampling": "3. prefill and decode vs the bandwidth bound",
          "vs_pytorch": "4. against transformers + peft, bf16",
          "reproduction": "5. paper-scale reproduction subset"}
FINAL = ("done", "skipped", "error")
JSON_NAME, MARKDOWN_NAME = "results.json", "results.md"


def _seconds(value: float) -> str:
  return f"{value:.1f}" if value < 10 else f"{value:.0f}"


class Run:
  """Results of one run under `budget_s` seconds counted from `started_at` (epoch seconds)."""

  def __init__(self, scale: Any, budget_s: float, started_at: float, out: str | pathlib.Path,
               merge: bool = False, log: Callable[[str], None] = print):
    self.scale, self.budget_s, self.started_at = scale, budget_s, started_at
    self.out = pathlib.Path(out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.log = log
    self.observed: dict[str, float] = {}  # measured rates that replace the scale's guesses
    self.results: dict[str, Any] = {
        "scale": scale.name, "budget_s": budget_s, "started_at": started_at,
        "environment": {}, "phases": {name: self.blank(name) for name in PHASES}}
    if merge and (self.out / JSON_NAME).exists():
      self.reload()

  @staticmethod
  def blank(name: str) -> dict[str, Any]:
    return {"name": name, "title": TITLES[name], "status": "pending", "reason": "",
            "estimate_s": None, "seconds": None, "items": []}

  def reload(self) -> None:
    """Takes the phases (and environment) another process of this run wrote."""
    saved = json.loads((self.out / JSON_NAME).read_text())
    self.results["phases"].update(saved.get("phases", {}))
    self.results["environment"] = saved.get("environment") or self.results["environment"]
    self.observed.update(saved.get("observed", {}))

  # -- the clock -----------------------------------------------------------------------------

  def elapsed(self) -> float:
    return time.time() - self.started_at

  def remaining(self) -> float:
    return self.budget_s - self.elapsed()

  def over_budget(self, estimate_s: float) -> str:
    """'' when `estimate_s` fits in the time left, else the reason to skip."""
    left = self.remaining()
    if estimate_s <= left:
      return ""
    return f"budget: needs ~{_seconds(estimate_s)} s, {_seconds(max(left, 0.0))} s left"

  # -- records -------------------------------------------------------------------------------

  def phase(self, name: str) -> dict[str, Any]:
    return self.results["phases"][name]

  def start_phase(self, name: str, estimate_s: float) -> dict[str, Any]:
    record = self.blank(name)
    record.update(status="running", estimate_s=estimate_s, started_s=self.elapsed())
    self.results["phases"][name] = record
    self.log(f"[{self.elapsed():6.1f} s] {TITLES[name]}: estimate ~{estimate_s:.0f} s, "
             f"{self.remaining():.0f} s left")
    self.save()
    return record

  def finish_phase(self, record: dict[str, Any], status: str = "", reason: str = "") -> None:
    """Status from the items unless given: error if any failed, done if any ran, else
    skipped with the first item's reason."""
    items = record["items"]
    if not status:
      if any(i["status"] == "error" for i in items):
        status = "error"
      elif any(i["status"] == "done" for i in items):
        status = "done"
      else:
        status = "skipped"
        reason = reason or next((i["reason"] for i in items if i.get("reason")), "nothing to do")
    record.update(status=status, reason=reason or record.get("reason", ""),
                  seconds=self.elapsed() - record.pop("started_s", self.elapsed()))
    self.log(f"[{self.elapsed():6.1f} s] {record['name']}: {status}"
             + (f" ({record['reason']})" if record["reason"] else ""))
    self.save()

  def item(self, record: dict[str, Any], label: dict[str, Any], estimate_s: float,
           fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Runs `fn` if its estimate fits; records its figures, or why it was skipped or failed."""
    entry = {**label, "estimate_s": estimate_s}
    reason = self.over_budget(estimate_s)
    if reason:
      entry.update(status="skipped", reason=reason)
    else:
      start = time.time()
      try:
        entry.update(fn() or {})
        entry.setdefault("status", "done")
      except Exception as e:  # pylint: disable=broad-except  # recorded; the run goes on
        entry.update(status="error", error=f"{type(e).__name__}: {e}"[:2000],
                     traceback=traceback.format_exc()[-4000:])
      entry["seconds"] = time.time() - start
    self.log(f"[{self.elapsed():6.1f} s]   {label}: {entry['status']}"
             + (f" ({entry.get('reason') or entry.get('error')})"
                if entry["status"] != "done" else f" in {entry['seconds']:.1f} s"))
    record["items"].append(entry)
    self.save()
    return entry

  def save(self) -> None:
    """JSON and Markdown, both rewritten whole (a reader never sees half a file)."""
    self.results["observed"] = self.observed
    self.results["elapsed_s"] = self.elapsed()
    for name, text in ((JSON_NAME, json.dumps(self.results, indent=1, default=str)),
                       (MARKDOWN_NAME, report.markdown(self.results))):
      tmp = self.out / (name + ".tmp")
      tmp.write_text(text)
      tmp.replace(self.out / name)
