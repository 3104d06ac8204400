#!/usr/bin/env bash
# Set up, then tune a model: bash scripts/quickstart.sh [MODEL.gguf] [autotune run options...]
# Without a model, a small synthetic MoE model is written first (random weights, real shape).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
model=${1:-}
if [ -z "$model" ] || [[ "$model" == -* ]]; then
  model=models/small-synthetic.gguf
  [ -f "$model" ] || autotune synth "$model" --preset small
else
  shift
fi
exec autotune run "$model" --vram-cap "${AUTOTUNE_VRAM_CAP:-16G}" "$@"
