#!/usr/bin/env bash
# Continue the embedded model v2's training (recipe: training/diffusion/recipe.json) on whatever
# this machine has -- a GPU when torch sees one -- for MINUTES of training (default 6: with
# loading and the latent pool the whole run fits the device tool's 10 minutes), warm-started from the
# committed state (training/diffusion/model), and write what the next session needs into OUT:
#   OUT/unet/{config.json,diffusion_pytorch_model.safetensors}  the EMA UNet (fp32, about 13 MB)
#   OUT/{train_log.csv,sessions.json,recipe.json}               this run's record
# The inputs are this repository alone (about 50 MB); on a machine without diffusers, put its wheel
# in .whl/ first. Back in a session, OUT/unet replaces training/diffusion/model/unet (the next
# warm start) and the log rows are appended to training/diffusion/train_log.csv (notes.md says how).
# Usage: training/diffusion/continue_on_gpu.sh OUT [MINUTES] [BATCH] [STEPS]
# (STEPS: this stage's cosine schedule; MINUTES stops it early, with the EMA weights exported)
set -euo pipefail
OUT=${1:?usage: continue_on_gpu.sh OUT [MINUTES] [BATCH] [STEPS]}
MINUTES=${2:-6}  # of training; loading and encoding the latent pool come on top (not yet timed on a GPU)
BATCH=${3:-256}
STEPS=${4:-6000}
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
  --unet-steps "$STEPS" --max-minutes "$MINUTES" --export-unfinished
mkdir -p "$OUT/unet"
cp "$WORK"/model/unet/* "$OUT/unet/"
cp "$WORK"/sessions.json "$WORK"/recipe.json "$OUT/"
if [ -f "$WORK/train_log.csv" ]; then cp "$WORK/train_log.csv" "$OUT/"; fi  # written every 50 steps
echo "wrote $OUT"
