"""Gathers the evaluations of a safety sweep into its table (Markdown + JSON) and plots.

A sweep directory holds one SFT run per grid point (experiments/sweep.py), each evaluated into
its `<run>/<eval_subdir>/` by the evaluate job. For every finished evaluation (result.json
present) this reads the scored answers back (answers.jsonl), summarizes them afresh, and takes
K and the format from the SFT run's config.json (data.num_safety, data.safety_format).

  python -m experiments.safety_report --sweep_dir=runs/safety_sweep
writes runs/safety_sweep/sweep.md, sweep.json and sweep.png.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from alignment.answers.records import ANSWERS_FILE, RESULT_FILE, read_answers
from alignment.evaluation import report
from alignment.evaluation.summary import RunMeta, RunSummary, summarize_run


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def run_meta(eval_dir: pathlib.Path) -> RunMeta:
  """K and format of the SFT run an evaluation belongs to.

  The SFT config is the one named by the evaluation's run_dir, else the evaluation
  directory's parent's config.json.
  """
  eval_config = _read_json(eval_dir / "config.json") if (eval_dir / "config.json").is_file() \
      else {}
  run_dir = pathlib.Path(eval_config.get("run_dir") or eval_dir.parent)
  config_path = run_dir / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{eval_dir}: no SFT run config at {config_path}, so K and the "
                            "format of this evaluation are unknown")
  data = _read_json(config_path).get("data")
  if not isinstance(data, dict) or "num_safety" not in data:
    raise ValueError(f"{config_path}: no data.num_safety (not an SFT run config)")
  return RunMeta(safety_examples=int(data["num_safety"]),
                        format=str(data.get("safety_format", "instruction")))


def find_evaluations(sweep_dir: str | pathlib.Path, eval_subdir: str = "eval"
                     ) -> list[pathlib.Path]:
  """Finished evaluation directories `<sweep_dir>/<run>/<eval_subdir>/`, sorted by run."""
  sweep_dir = pathlib.Path(sweep_dir)
  if not sweep_dir.is_dir():
    raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
  return sorted(p.parent for p in sweep_dir.glob(f"*/{eval_subdir}/{RESULT_FILE}"))


def gather(sweep_dir: str | pathlib.Path, eval_subdir: str = "eval"
           ) -> dict[RunMeta, RunSummary]:
  """{RunMeta: RunSummary} of every finished evaluation in the sweep.

  Runs sharing K and format (e.g. several seeds) are told apart by their run directory names.
  """
  found = [(run_meta(d), d) for d in find_evaluations(sweep_dir, eval_subdir)]
  if not found:
    raise FileNotFoundError(f"no finished evaluations (*/{eval_subdir}/{RESULT_FILE}) in "
                            f"{sweep_dir}")
  metas = [m for m, _ in found]
  summaries = {}
  for meta, eval_dir in found:
    if metas.count(meta) > 1:
      meta = RunMeta(meta.safety_examples, meta.format, eval_dir.parent.name)
    summaries[meta] = summarize_run(read_answers(eval_dir / ANSWERS_FILE))
  return summaries


def write_report(sweep_dir: str | pathlib.Path, out_dir: str | pathlib.Path | None = None,
                 eval_subdir: str = "eval", title: str = "Safety-examples sweep"
                 ) -> dict[str, pathlib.Path]:
  """Writes sweep.md, sweep.json and sweep.png into `out_dir` (default: the sweep dir)."""
  summaries = gather(sweep_dir, eval_subdir)
  return report.write_sweep_report(out_dir or sweep_dir, summaries, title=title)


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  paths = write_report(f.sweep_dir, f.out_dir or None, f.eval_subdir, f.title)
  print(pathlib.Path(paths["markdown"]).read_text())
  print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("sweep_dir", "runs/safety_sweep", "Directory holding the sweep's runs.")
  flags.DEFINE_string("out_dir", "", "Where to write sweep.md/.json/.png (default: sweep_dir).")
  flags.DEFINE_string("eval_subdir", "eval", "Each run's evaluation subdirectory.")
  flags.DEFINE_string("title", "Safety-examples sweep", "Report title.")
  app.run(main)
