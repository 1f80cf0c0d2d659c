#!/usr/bin/env bash
# Issue 14's dictionary measurements on one GPU in one run (budgeted to finish within 6 minutes on
# an H100): JumpReLU, ReLU-L1, TopK, BatchTopK SAEs and a TopK transcoder (d=1024, F=16384, k=256)
# at batch 1024 and 8192, eager and compiled, bfloat16 autocast, the TopK family with the default
# (dense) kernel and eager also with the sparse one; samples/s against the bf16 matmul peak measured
# in the same run. Writes a markdown table to OUT, a row as soon as it is measured.
#   benchmarks/gpu_all.sh OUT.md                       # on the GPU
#   benchmarks/gpu_all.sh OUT.md --device cpu --quick  # the same code paths at toy sizes (checks the script)
# Needs torch and this checkout only (numpy, tqdm, hydra and the rest are not imported).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT.md [--device cuda|cpu] [--quick]" >&2; exit 2; }
out=$(realpath -m "$1"); shift
device=cuda; quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "$0: unknown option '$1' (expected --device cuda|cpu, --quick)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
$py -c "import torch, maia_adapt.dictionaries.transcoder" \
  || { echo "$0: torch or maia_adapt.dictionaries does not import (see above)" >&2; exit 1; }
if [ "$device" = cuda ]; then
  $py -c "import torch, sys; torch.cuda.is_available() or sys.exit('$0: torch sees no CUDA device')"
  sizes=(--d 1024 --f 16384 --k 256 --batch 1024 8192 --steps 20 --bf16 --budget-s 270)
else
  sizes=(--d 1024 --f 16384 --k 256 --batch 1024 --steps 3)
fi
[ "$quick" = 1 ] && sizes=(--d 32 --f 256 --k 8 --batch 64 256 --steps 2)
mkdir -p "$(dirname "$out")"
echo "# Dictionary training throughput ($(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))" >"$out"
echo >>"$out"
$py benchmarks/bench_sae.py --device "$device" "${sizes[@]}" --modes eager compile --kernels auto sparse \
  --check --out "$out"
echo "wrote $out"
