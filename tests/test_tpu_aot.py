"""The TPU AOT table (experiments/tpu_aot.py): SFT-LoRA and PPO steps of 270M, 2B and 7B
compiled for v5e, v5p and v6e slices. Runs where libtpu is installed (`make test-tpu`, in its
own virtualenv .venv-tpu); skipped in the everyday environment.

The grid is $ALIGNMENT_AOT_GRID: `main` (default; remat none and full for each case, about
50 minutes on 2 cores) or `ci` (each model once with remat=full, about 10 minutes; .ci/run).
The table is written to $ALIGNMENT_AOT_TABLE (default build/tpu_aot.md) for docs/MULTIHOST.md.
"""

import importlib.util
import os
import pathlib

import jax
import pytest

from alignment import lora as lora_lib
from experiments import tpu_aot

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="TPU AOT compilation needs libtpu: run `make test-tpu` (its own venv, .venv-tpu)")

REPO = pathlib.Path(__file__).resolve().parents[1]
GRID = os.environ.get("ALIGNMENT_AOT_GRID", "main")


@pytest.fixture(scope="module")
def table():
  out = pathlib.Path(os.environ.get("ALIGNMENT_AOT_TABLE", REPO / "build" / "tpu_aot.md"))
  out.parent.mkdir(parents=True, exist_ok=True)
  rows = []
  for case in tpu_aot.GRIDS[GRID]:  # the table grows row by row: a timed-out run keeps its rows
    rows.append((case, tpu_aot.run_case(case)))
    out.write_text(tpu_aot.markdown(rows))
  return rows


def test_three_generations_and_three_sizes_are_covered(table):
  rows = table
  kinds = {r.device_kind for _, r in rows}
  assert {"TPU v5 lite", "TPU v5", "TPU v6 lite"} <= kinds, kinds
  assert {c.model for c, _ in rows} == {"gemma3_270m", "gemma_2b", "gemma_7b"}
  assert {c.step for c, _ in rows} == {"sft_lora", "ppo_lora"}


def test_full_remat_fits_every_chip(table):
  rows = table
  for case, report in rows:
    assert report.hbm_bytes is not None, report.device_kind
    if case.remat == "full":
      assert report.fits and report.peak_bytes <= report.hbm_bytes, (case, report)
    if report.fits:
      assert report.flops_per_step > 0


def test_remat_trades_flops_for_activation_memory(table):
  rows = table
  by_key = {(c.model, c.step, c.remat): r for c, r in rows}
  pairs = [key for key in by_key if key[2] == "full" and (*key[:2], "none") in by_key]
  if GRID == "ci":
    assert not pairs
    pytest.skip("the ci grid compiles remat=full only; the main grid (`make test-tpu`) pairs them")
  assert len(pairs) == 6, sorted(by_key)
  for name, step, _ in pairs:
    full = by_key[(name, step, "full")]
    none = by_key[(name, step, "none")]
    if none.fits is False and not none.temp_bytes:
      continue  # XLA refused remat=none outright: it needs more than HBM, full fits
    assert full.temp_bytes < none.temp_bytes, (name, step)
    assert full.flops_per_step > none.flops_per_step, (name, step)  # the recomputed forward
    assert full.argument_bytes == none.argument_bytes, (name, step)


def test_arguments_per_chip_are_the_sharded_state(table):
  """SFT-LoRA arguments: a 1/chips share of the frozen float32 base, plus the adapters with
  two Adam moments, plus the batch (four int32 rows) -- counted from the shapes."""
  rows = table
  for case, report in rows:
    if case.step != "sft_lora" or not report.argument_bytes:
      continue
    cfg = tpu_aot.model_config(case)
    adapters = jax.eval_shape(
        lambda c=cfg: lora_lib.init_adapters(c, lora_lib.LoraConfig(), jax.random.key(0)))
    lora_bytes = 3 * 4 * sum(x.size for x in jax.tree.leaves(adapters))
    batch_bytes = 4 * 4 * case.batch_size * (case.seq_len + 1)
    expected = (4 * cfg.num_params() + lora_bytes + batch_bytes) / report.num_chips
    # Leaves that do not split evenly (norm scales, one KV head) are replicated: a few %.
    assert expected <= report.argument_bytes <= 1.05 * expected, (case, report)
