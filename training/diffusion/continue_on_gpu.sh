#!/usr/bin/env bash
# Continue the embedded model v2's training (recipe: training/diffusion/recipe.json) on whatever
# this machine has -- a GPU when torch sees one -- for MINUTES of training, warm-started from the
# committed state (training/diffusion/model), and write what the next session needs into OUT:
#   OUT/unet/{config.json,diffusion_pytorch_model.safetensors}  the EMA UNet (fp32, about 13 MB)
#   OUT/{train_log.csv,sessions.json,recipe.json}               this run's record
# The inputs are this repository alone (about 50 MB); on a machine without diffusers, put its wheel
# in .whl/ first. Back in a session, OUT/unet replaces training/diffusion/model/unet (the next
# warm start) and the log rows are appended to training/diffusion/train_log.csv (notes.md says how).
# Usage: training/diffusion/continue_on_gpu.sh OUT [MINUTES] [BATCH]
set -euo pipefail
OUT=${1:?usage: continue_on_gpu.sh OUT [MINUTES] [BATCH]}
MINUTES=${2:-8}
BATCH=${3:-256}
cd "$(dirname "$0")/../.."
PY=$(command -v .venv/bin/python || command -v python3)
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/dde-site .whl/*.whl
  export PYTHONPATH=/tmp/dde-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
WORK=$(mktemp -d /tmp/dde-v2.XXXX)  # the latent pool (200 MB) and optimizer state stay here
cp training/diffusion/recipe.json "$WORK/recipe.json"
"$PY" -m engine.cli train diffusion --out "$WORK" --init-from training/diffusion/model --batch-size "$BATCH" \
  --max-minutes "$MINUTES" --export-unfinished
mkdir -p "$OUT/unet"
cp "$WORK"/model/unet/* "$OUT/unet/"
cp "$WORK"/train_log.csv "$WORK"/sessions.json "$WORK"/recipe.json "$OUT/"
echo "wrote $OUT"
