#!/usr/bin/env bash
# The GPU check: on a CUDA machine, in under 8 minutes,
#   1. the CUDA-marked tests (device selection, bf16 autocast, pinned memory, nccl with one process);
#   2. the retriever at the `paper` preset on Amazon Beauty, trained from scratch on base for a fixed
#      number of epochs in bf16 autocast, then again in fp32: tokens/s, MFU against the GPU's measured
#      bf16 matmul peak, peak memory, decoding time, and the two runs' quality side by side
#      (benchmarks/gpu_bench.py).
#
# Usage:
#   benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--sids DIR] [--epochs N]
#
#   --dry-run   the same steps on the CPU at tiny sizes on the synthetic data (the test suite runs it)
#   --out DIR   where the log and gpu-bench.json go (default benchmarks/out/gpu)
#   --sids DIR  a SidTable of the paper preset's shape built elsewhere (default: built here, which
#               needs faiss)
#   --epochs N  training epochs of each run (default 4)
#
# PYTHON picks the interpreter (default .venv/bin/python, else python3). Exit code 2: no GPU (and no
# --dry-run), or a bad option.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out=benchmarks/out/gpu
sids=()
epochs=4
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --out) out="$2"; shift 2 ;;
        --sids) sids=(--sids "$2"); shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1; see benchmarks/gpu_check.sh --help" >&2; exit 2 ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
log="$out/gpu-check.log"
: > "$log"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$log"; }

if [[ $dry_run == 1 ]]; then
    device=cpu; bench=(--dataset synthetic --preset tiny --epochs 1 --beam 20 --max-eval-users 100 --threads 1)
else
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "error: torch sees no CUDA GPU here; run on a GPU machine, or pass --dry-run." >&2
        exit 2
    fi
    device=cuda; bench=(--dataset amazon-beauty --preset paper --epochs "$epochs" --beam 500)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log" || true
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$log"

say "1/2 CUDA-marked tests"
"$PYTHON" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tee -a "$log"

say "2/2 retriever: bf16 then fp32 on $device (${bench[*]})"
timeout 420 "$PYTHON" benchmarks/gpu_bench.py --device "$device" "${bench[@]}" "${sids[@]}" --out "$out" 2>&1 | tee -a "$log"
say "done: $out/gpu-bench.json"
