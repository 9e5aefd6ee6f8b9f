#!/usr/bin/env bash
# One GPU loan in one call: the `gpu` tests, then the GPU check (bench/gpu_check.sh), both under $OUT.
# Sized for one device call (at most 600 s) in a loan of 15 minutes with the machine's start: the tests
# capped at 90 s, the check at 440 s (its own budget 390 s unless --budget-s is given), 570 s at worst.
#
# Before the loan, in the checkout (bench/work/ is ignored by git; name the three folders in the device's carry):
#   bench/work/pylib     pytest + pytest-timeout for a python without them:
#                        .venv/bin/pip install -q --target bench/work/pylib pytest pytest-timeout
#   bench/work/FuxiCTR   a reczoo/FuxiCTR snapshot (its fuxictr/ and model_zoo/), for the check's FuxiCTR rows:
#                        git --git-dir=<mirror of reczoo/FuxiCTR> archive HEAD | tar -x -C bench/work/FuxiCTR
#   bench/work/test-data the tests' small datasets, made here (making them needs pyarrow; loading them does not):
#                        .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); import conftest
#                        [conftest.small_dataset(n, f'bench/work/test-data/{n}_small') for n in ('criteo', 'avazu')]"
# On the GPU machine:   bash bench/gpu_session.sh [gpu_check flags, e.g. --sections fuxictr for a rerun]
# Writes $OUT/<date>-gpu-tests.txt (the machine, then pytest's report, its exit status last) and
# $OUT/<date>-gpu-check-gpu.{json,md}. Exit: the check's status (the tests' is in the .txt).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHON
[ -d bench/work/FuxiCTR ] && export FUXICTR_SRC="${FUXICTR_SRC:-$PWD/bench/work/FuxiCTR}"
[ -d bench/work/test-data ] && export CTRKIT_TEST_DATA="${CTRKIT_TEST_DATA:-$PWD/bench/work/test-data}"
TESTS="$OUT/$(date -u +%Y-%m-%d)-gpu-tests.txt"

# the gpu-marked tests: graph == eager, metrics on the device, then the compiled models (inductor's
# compiles are the slow part, so they come last under the cap)
(
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  PYTHONPATH="$PWD:$PWD/bench/work/pylib${PYTHONPATH:+:$PYTHONPATH}" timeout --signal=INT --kill-after=10 90 \
    "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/test_graph_mode.py tests/test_graph.py \
    tests/test_metrics.py tests/test_compiled.py
  echo "exit status $?"
) > "$TESTS" 2>&1
tail -n 3 "$TESTS"

case " $* " in *" --budget-s "*) ;; *) set -- --budget-s 390 "$@" ;; esac
GPU_CHECK_CAP="${GPU_CHECK_CAP:-440}" bash bench/gpu_check.sh "$@"
