#!/usr/bin/env bash
# The one command of a device call (the device tool runs it in the repo root of a copy of
# the working tree, with runs/accelerator_carry carried and $OUT coming back):
#   bash experiments/accelerator/device.sh BUDGET_S [more run.py flags]
# Installs the carried wheels the image lacks, then runs the prepared entry at --scale=h200
# with results in $OUT/accelerator (rewritten after every item, so a cut-off run returns
# what it finished). Keep BUDGET_S about 60 s under the call's timeout_s: install, imports
# and the last item's overrun are not in the budget.
set -u
BUDGET=${1:-520}
shift || true
PY=${PYTHON:-$(command -v python3 || command -v python)}
OUT=${OUT:-runs/accelerator/device}
mkdir -p "$OUT/accelerator"
SITE=${ACCELERATOR_SITE:-$PWD/runs/accelerator_site}
"$PY" experiments/accelerator/carry.py install --site="$SITE" \
  > "$OUT/accelerator/carry_install.txt" 2>&1 \
  || echo "carry install failed (see carry_install.txt); running anyway"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/alignment_jax_cache}
nvidia-smi > "$OUT/accelerator/nvidia_smi.txt" 2>&1 || true
exec "$PY" -m experiments.accelerator.run --scale=h200 --budget_s="$BUDGET" \
  --out="$OUT/accelerator" "$@"
