#!/usr/bin/env bash
# ctrkit GPU check, one script, sized to finish within 8 minutes on one H200:
#   Criteo-scale synthetic tensors made on the device (36.7M x 39 int32, x4_001-like vocab sizes),
#   one epoch of DeepFM, DCN, PNN and FiBiNET at the BARS x4_001 sizes (ctrkit.training.loop.fit, bf16
#   autocast by default), one 4-peer mutual epoch (ctrkit.training.mutual.mutual_fit); prints a table
#   (samples/s, epoch seconds, peak memory) and writes JSON under $OUT (else bench/results).
#
# Usage:  bash bench/gpu_check.sh                      # on the GPU machine, from the repo root
#         bash bench/gpu_check.sh --device cpu --rows 20000 --eval-rows 2000 --batch-size 2000
#                                                      # dry run on a CPU (numbers mean nothing)
# Other flags: --models, --mutual-peers, --amp auto|bf16|off, --budget-s (python bench/gpu_check.py -h).
# Needs: python with torch (CUDA build on the GPU machine), numpy, tqdm, pyyaml -- ctrkit itself is
# imported from this checkout, no install needed. PYTHON=... picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"${PYTHON}" - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "numpy", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: {sys.executable} lacks {', '.join(missing)}; set PYTHON to an interpreter with them")
EOF
# the whole check under a hard wall-clock cap, so a stuck run cannot eat the device budget
exec timeout --signal=INT --kill-after=30 470 "${PYTHON}" bench/gpu_check.py "$@"
