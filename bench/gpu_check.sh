#!/usr/bin/env bash
# ctrkit GPU check (issues 23 and 21), one script, sized to finish within 8 minutes on one H200:
#   Criteo-scale synthetic tensors made on the device (36.7M x 39 int32, x4_001-like vocab sizes), then
#   equal    graph == eager (DeepFM alone, DeepFM + DCN mutual; fp32 and bf16; dropout 0)
#   matrix   every model eager vs graph, fp32 (TF32) vs bf16, the steady epoch on 1M rows (samples/s, mfu)
#   mutual   4 x DeepFM and the 4 paper models in one step: eager, graph (peers on streams), graph one stream
#   replicas issue 21: K = 1..16 DeepFM replicas per step (smoke, quick, BARS sizes) vs one run; 8 smoke-preset
#            seeds as replicas (fit_replicas, what run_many does on a GPU) vs one run alone, eager and graph
#   fuxictr  FuxiCTR's own train_step on the same tensors when FUXICTR_SRC points to a FuxiCTR snapshot
#            (a reczoo/FuxiCTR checkout: its fuxictr/ and model_zoo/); "n/a" otherwise
#   estimate `ctrkit reproduce --profile paper` and the study profile (Criteo x4 rows) from epochs timed here
#   epochs   one epoch of DeepFM, DCN, PNN, FiBiNET (BARS x4_001 sizes) and a 4 x DeepFM mutual epoch on
#            all rows, at ctrkit's defaults (amp auto = bf16, graph auto): the issue's targets
#   compile  every model in bf16 graph mode through torch.compile, against the matrix's graph rows
#   prints a table (samples/s, epoch seconds, mfu, peak memory) and writes it as Markdown beside the JSON of
#   everything under $OUT (else bench/results).
#
# Usage:  bash bench/gpu_check.sh                      # on the GPU machine, from the repo root
#         bash bench/gpu_check.sh --device cpu --rows 20000 --eval-rows 2000 --batch-size 2000
#                                                      # dry run on a CPU (smoke models; numbers mean nothing)
# Other flags: --sections, --models, --mutual-peers, --amp, --step-rows, --budget-s (python bench/gpu_check.py -h).
# Exit 0 when every row is ok or n/a (not applicable here), 1 otherwise (a mismatch, an error, a budget skip).
# Needs: python with torch (CUDA build on the GPU machine), numpy, tqdm, pyyaml, pandas (the estimate) -- ctrkit itself is
# imported from this checkout, no install needed. PYTHON=... picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"${PYTHON}" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: {sys.executable} lacks {', '.join(missing)}; set PYTHON to an interpreter with them")
EOF
# the whole check under a hard wall-clock cap, so a stuck run cannot eat the device budget
# (GPU_CHECK_CAP: seconds, 470 unless set; gpu_session.sh sets less, its tests come first)
exec timeout --signal=INT --kill-after=30 "${GPU_CHECK_CAP:-470}" "${PYTHON}" bench/gpu_check.py "$@"
