#!/usr/bin/env bash
# On one GPU: the study runner's --gpu preset on Maia-3, the first time its CUDA paths run (they were
# written where no GPU was lent; tests/test_devices.py checks them on PyTorch's meta device only).
#   1. `python -m maia_adapt.study --quick --gpu model=maia3_tiny`: every quick step with its model on CUDA,
#      beside the same quick study on the CPU, the headlines compared (equal up to float rounding and
#      the GPU's kernels; a step that fails names the file and line to fix);
#   2. the quick --gpu study on a random-weight Maia-3 of a published size (23m by default), saved in
#      maia3-runtime's checkpoint format, as a user's checkpoint would be read: wall time only (random
#      weights measure speed, not skill).
#   benchmarks/gpu_maia3_study.sh OUTDIR [SIZE] [SECONDS_PER_RUN]
# Writes OUTDIR/gpu_maia3_study.md (one line per run: exit status, seconds) and the runs' logs. Needs no
# ../shared (the embedded games); Stockfish is not needed (the quick study ships its engine answers).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [SIZE] [SECONDS_PER_RUN]" >&2; exit 2; }
out=$(realpath -m "$1"); size=${2:-23m}; limit=${3:-400}
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
$py -c "import torch, sys; torch.cuda.is_available() or sys.exit('$0: torch sees no CUDA device')" || exit 1
mkdir -p "$out"
md=$out/gpu_maia3_study.md
{ echo "# The --gpu study on Maia-3 ($(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo; $py -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"; echo; } >"$md"
study() {  # NAME ARGS...: one study run, its log and time
  local name=$1; shift
  local t0=$SECONDS
  timeout "$limit" $py -m maia_adapt.study "$@" "paths.outputs=$out/$name" >"$out/$name.log" 2>&1
  local rc=$?
  echo "- $name: exit $rc after $((SECONDS - t0)) s (\`python -m maia_adapt.study $*\`)" | tee -a "$md"
}
study quick_gpu_tiny --quick --gpu model=maia3_tiny
study quick_cpu_tiny --quick model=maia3_tiny
for d in quick_gpu_tiny quick_cpu_tiny; do
  f=$(find "$out/$d" -name headline.md | head -1)
  [ -n "$f" ] && { echo; echo "## $d"; echo; sed -n '/^| question/,/^$/p' "$f"; } >>"$md"
done
ckpt=$out/maia3_$size.pt
$py - "$size" "$ckpt" <<'EOF'
import sys, torch
from maia_adapt.model.maia3 import Maia3, maia3_state_dict, size_config

torch.manual_seed(0)
net = Maia3(size_config(sys.argv[1]))
torch.save({"model_state_dict": maia3_state_dict(net)}, sys.argv[2])  # maia3-runtime's checkpoint format
print(f"random Maia-3 {sys.argv[1]}: {sum(p.numel() for p in net.parameters()):,} parameters -> {sys.argv[2]}")
EOF
study "quick_gpu_$size" --quick --gpu model=maia3 "model.size=$size" "model.checkpoint=$ckpt"
echo "wrote $md"
