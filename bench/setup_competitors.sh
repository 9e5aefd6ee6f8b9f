#!/usr/bin/env bash
# Creates bench/.venv-competitors with FuxiCTR 2.3.10 and DeepCTR-Torch 0.3.0 for the side-by-side
# benchmark. Kept apart from the project venv: both pin old libraries (FuxiCTR imports Ray,
# DeepCTR-Torch pulls scikit-learn/tqdm of its own) and neither belongs in ctrkit's dependencies.
#
# Usage: bash bench/setup_competitors.sh          (idempotent: re-running only re-checks imports)
# Env:   PYTHON (default python3), TORCH (default torch==2.13.0, the same build as ctrkit's venv so
#        the comparison measures the frameworks, not two different torch builds).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HERE}/.venv-competitors"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
PY="${VENV}/bin/python"

if [ ! -x "${PY}" ]; then
  "${PYTHON}" -m venv "${VENV}"
fi

if [ ! -f "${VENV}/.installed" ]; then
  "${PY}" -m pip install -q --upgrade pip
  # torch first, from the same spec as the project, so the competitors cannot drag in another build.
  "${PY}" -m pip install -q "${TORCH}"
  # polars<2: FuxiCTR 2.3.10's preprocessing breaks on polars 2.x.
  "${PY}" -m pip install -q "fuxictr==2.3.10" "polars<2" "deepctr-torch==0.3.0" "${TORCH}"
  touch "${VENV}/.installed"
fi

# Both must import, and torch must still be the one we asked for.
"${PY}" - <<'EOF'
import os
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import torch, fuxictr, deepctr_torch
from fuxictr.pytorch.models import BaseModel  # noqa: F401  (the class model_zoo models derive from)
from deepctr_torch.models import DeepFM, DCN, PNN, FiBiNET  # noqa: F401
print(f"competitors ok: torch {torch.__version__}, fuxictr {fuxictr.__version__}, "
      f"deepctr-torch {deepctr_torch.__version__}")
EOF

if [ -z "${FUXICTR_MODEL_ZOO:-}" ]; then
  echo "note: FUXICTR_MODEL_ZOO is unset; the benchmark will skip FuxiCTR. Point it at the" \
       "model_zoo/ folder of a reczoo/FuxiCTR checkout (kept outside this repository)."
fi
