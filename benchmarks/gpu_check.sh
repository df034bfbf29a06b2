#!/usr/bin/env bash
# GPU check of the Triton kernels, one prepared run (under 8 minutes on one H100/H200):
#   1. the kernel cases of tests/triton_kernel_cases.py natively on CUDA (fp32 with TRITON_F32_DEFAULT=ieee,
#      fp16, bf16, plus larger shapes than the interpreter can take);
#   2. forward+backward timings (benchmarks/gpu_bench.py): Triton vs the chunked PyTorch path vs SDPA causal
#      attention of the same width vs fla's chunk_gla if importable; B=8, d=512, T in {512, 2048, 8192},
#      e in {2, 16, 128}. Writes OUT_DIR/gpu_bench.csv and prints the ratio table.
# Needs no fairseq. Wheels found in ./.whl (e.g. flash-linear-attention for chunk_gla) are installed first.
#
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]    (default: $OUT if set, else results/gpu_check)
#        PYTHON=python3 (default) picks the interpreter.
set -euo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh [OUT_DIR]" >&2; exit 2; }
[[ $# -le 1 ]] || usage
[[ "${1:-}" != "-h" && "${1:-}" != "--help" ]] || usage

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$REPO/results/gpu_check}}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
cd "$REPO"

if compgen -G ".whl/*.whl" >/dev/null; then
    SITE="$(mktemp -d)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET HGRN2_BACKEND

if ! "$PYTHON" -c "import torch, triton, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: $PYTHON sees no CUDA GPU (or lacks torch/triton)" >&2
    exit 1
fi
"$PYTHON" -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"

status=0
echo "== 1/2 kernel cases on CUDA"
# compiling the kernel variants dominates this step: spread it over pytest-xdist workers where installed
parallel=()
if "$PYTHON" -c "import xdist" 2>/dev/null; then
    parallel=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")
fi
if ! HGRN2_TEST_DEVICE=cuda TRITON_F32_DEFAULT=ieee HGRN2_TRITON_SINGLE_CONFIG=1 timeout 240 \
    "$PYTHON" -m pytest tests/triton_kernel_cases.py -q -p no:cacheprovider -W ignore::DeprecationWarning \
    "${parallel[@]}" 2>&1 | tee "$OUT_DIR/gpu_tests.log"; then
    echo "error: kernel cases failed on CUDA (see $OUT_DIR/gpu_tests.log)" >&2
    status=1
fi

echo "== 2/2 forward+backward timings"
if ! timeout 210 "$PYTHON" benchmarks/gpu_bench.py --csv "$OUT_DIR/gpu_bench.csv" --budget-s 1.0 --max-s 170 \
    2>&1 | tee "$OUT_DIR/gpu_bench.log"; then
    echo "error: the benchmark failed or timed out (partial CSV: $OUT_DIR/gpu_bench.csv)" >&2
    status=1
fi
exit "$status"
