"""The run's Markdown: phase statuses, the issue's targets (met / missed / not measured), and
one table per phase. Rebuilt from the JSON record after every item."""

from __future__ import annotations

from typing import Any, Sequence

from experiments.benchmarks.accounting import format_value

MFU_TARGET, DECODE_TARGET, SPEEDUP_TARGET = 0.45, 0.60, 1.5


def pct(value: Any) -> str:
  return "n/a" if value is None else f"{100.0 * float(value):.1f}%"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
  """Markdown table of `rows`; columns are (header, key), a key ending in '%' is a fraction."""
  lines = ["| " + " | ".join(h for h, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  for row in rows:
    cells = [pct(row.get(k[:-1])) if k.endswith("%") else format_value(row.get(k))
             for _, k in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _done(phase: dict[str, Any]) -> list[dict[str, Any]]:
  return [i for i in phase.get("items", []) if i.get("status") == "done"]


def sample_rows(phase: dict[str, Any]) -> list[dict[str, Any]]:
  return [{"model": i["model"], **r} for i in _done(phase) for r in i.get("rows", [])]


def torch_rows(phase: dict[str, Any]) -> list[dict[str, Any]]:
  return [{"batch": i["batch"], **r} for i in _done(phase) for r in i.get("rows", [])]


def notes(items: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
  """One line per item that did not finish: what it was, its status and why."""
  return [f"- {' '.join(str(i.get(k)) for k in keys)}: {i['status']} "
          f"({i.get('reason') or i.get('error', '')})"
          for i in items if i.get("status") != "done"]


def _verdict(value: Any, threshold: float) -> str:
  if value is None:
    return "not measured"
  return "met" if value >= threshold else "missed"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
  """The issue's targets against what this run measured (datasheet peaks, as MFU is quoted)."""
  phases, out = results["phases"], []
  full = [i for i in phases["train"]["items"] if i.get("mode") == "train_full"]
  for item in full or [{}]:
    out.append({"target": f"full fine-tuning MFU >= {MFU_TARGET:.0%}",
                "where": f"{item.get('model', '-')} {item.get('batch', '')}x{item.get('seq', '')}",
                "value": pct(item.get("mfu")), "status": _verdict(item.get("mfu"), MFU_TARGET)})
  decodes = [r for r in sample_rows(phases["sampling"])
             if r["mode"] == "decode" and r["batch"] == 1]
  for row in decodes or [{}]:
    value = row.get("bandwidth_fraction")
    out.append({"target": f"decode at batch 1 >= {DECODE_TARGET:.0%} of the bandwidth bound",
                "where": row.get("model", "-"), "value": pct(value),
                "status": _verdict(value, DECODE_TARGET)})
  for row in torch_rows(phases["vs_pytorch"]) or [{}]:
    value = row.get("jax_speedup")
    out.append({"target": f">= {SPEEDUP_TARGET}x transformers + peft",
                "where": f"{row.get('figure', '-')}, batch {row.get('batch', '-')}",
                "value": "n/a" if value is None else f"{value:.2f}x",
                "status": _verdict(value, SPEEDUP_TARGET)})
  return out


def markdown(results: dict[str, Any]) -> str:
  env, phases = results.get("environment") or {}, results["phases"]
  lines = [f"# Accelerator run: scale {results['scale']}, budget {results['budget_s']:.0f} s, "
           f"{results.get('elapsed_s', 0.0):.0f} s used", "",
           f"Device: {env.get('device_kind', 'n/a')} ({env.get('backend', 'n/a')}), "
           f"jax {env.get('jax', 'n/a')}. MFU and bandwidth fractions are of the datasheet "
           "peaks; the 'measured' columns divide by phase 1's ceilings.", "", "## Phases", ""]
  lines += table([{**p, "phase": p["title"]} for p in phases.values()],
                 [("phase", "phase"), ("status", "status"), ("estimate s", "estimate_s"),
                  ("seconds", "seconds"), ("reason", "reason")])
  lines += ["", "## Targets", ""]
  lines += table(targets(results), [("target", "target"), ("where", "where"),
                                    ("value", "value"), ("status", "status")])
  lines += ["", "## 1. Ceilings", ""]
  lines += table(phases["ceilings"]["items"],
                 [("figure", "figure"), ("status", "status"), ("measured /s", "value"),
                  ("datasheet /s", "datasheet"), ("of datasheet", "fraction_of_datasheet%"),
                  ("seconds", "seconds")])
  lines += notes(phases["ceilings"]["items"], ("figure",))
  lines += ["", "## 2. Training", ""]
  lines += table(phases["train"]["items"],
                 [("model", "model"), ("mode", "mode"), ("status", "status"),
                  ("batch", "batch"), ("seq", "seq"), ("step s", "step_s"),
                  ("tokens/s", "tokens_per_s"), ("FLOP/s", "flops_per_s"), ("MFU", "mfu%"),
                  ("MFU measured", "mfu_vs_measured%"), ("compile s", "compile_s"),
                  ("peak bytes", "peak_bytes"), ("OOM halvings", "oom_halvings")])
  lines += notes(phases["train"]["items"], ("model", "mode", "batch", "seq"))
  lines += ["", "## 3. Sampling", ""]
  lines += table(sample_rows(phases["sampling"]),
                 [("model", "model"), ("mode", "mode"), ("batch", "batch"),
                  ("prompt", "prompt"), ("new", "new"), ("seconds", "seconds"),
                  ("tokens/s", "tokens_per_s"), ("ms/step", "ms_per_step"),
                  ("bytes/step", "bytes_per_step"), ("of bound", "bandwidth_fraction%"),
                  ("of measured", "bandwidth_fraction_measured%"), ("MFU", "mfu%")])
  lines += notes(phases["sampling"]["items"], ("model", "batch"))
  lines += ["", "## 4. Against transformers + peft", ""]
  lines += table(torch_rows(phases["vs_pytorch"]),
                 [("batch", "batch"), ("figure", "figure"), ("jax", "jax"),
                  ("pytorch", "pytorch"), ("jax speed-up", "jax_speedup")])
  lines += notes(phases["vs_pytorch"]["items"], ("batch",))
  repro = phases["reproduction"]
  lines += ["", "## 5. Reproduction subset", "",
            f"Status: {repro['status']}" + (f" ({repro['reason']})" if repro["reason"] else ""),
            ""]
  if repro.get("commands"):
    lines += ["```"] + repro["commands"] + ["```"]
  return "\n".join(lines) + "\n"
