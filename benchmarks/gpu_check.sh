#!/usr/bin/env bash
# The GPU figures in one call: on a CUDA machine, the training-step, extraction and fit_probes benchmarks at sizes
# that finish in under 8 minutes together (each under its own timeout), printing model FLOPs utilisation, frames/s
# and fit_probes' seconds at DAVIS-2017 val size. On a machine without a GPU it says so and exits 0.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to use another interpreter than .venv/bin/python
#
# The backbone is DINO's ViT-S/16 shape (timm vit_small_patch16_224) with random weights: the machine needs no
# download, and speed does not depend on the weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False on $(hostname)); nothing measured"
  exit 0
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check on {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"
CORES=$(nproc)
step() {  # name, timeout in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" || echo "== $name: exit $? (a timeout is 124)"
  echo "== $name: $((SECONDS - start)) s"
}
# training step, ViT-S/16 at 224 px, 4-frame clips: ms/step, clips/s and MFU against the bare timm step
step "train step" 150 "$PY" benchmarks/train_step.py --backbone vit_small_patch16_224 --weights none \
  --batch 16 --frames 4 --size 224 --steps 5 --rounds 3
# extraction: frames/s of extract_features against the bare forward
step "extract" 120 "$PY" benchmarks/extract.py --backbone vit_small_patch16_224 --weights none --size 224 \
  --batch 64 --rounds 2
# fit_probes at DAVIS-2017 val size (2,000 frames, both models, every protocol, 3 seeds): the linear probe and the
# retrieval on the GPU (exact search: a matrix product is what a GPU does best), k-means on the CPU cores
step "fit_probes at DAVIS size" 240 "$PY" benchmarks/probes.py --sizes 2000 --threads "$CORES" \
  --set hummingbird_search=exact
