#!/usr/bin/env bash
# On one GPU: distillation of the Maia-1 family into the small Maia-2, side by side from one store:
# experiment=skill_model (fine-tuning the shipped model) and the same teacher from random weights, both
# with the preset's contrast loss (train.teacher_contrast: 0.1, what opened the low gap on the CPU, README).
#   benchmarks/gpu_skill_model.sh PGN OUTDIR [SECONDS_PER_RUN]   (Maia-1 nets under $MAIA_ADAPT_MODELS/maia1)
set -uo pipefail
pgn=$1; out=$2; limit=${3:-600}
store=$out/store
common=("data.pgn=[$pgn]" data.store_dir=$store data.workers=16 train.device=cuda train.loader_workers=4 logger=none)
mkdir -p "$out"
. "$(dirname "$0")/_gpu_run.sh"
run distill_finetune experiment=skill_model &
# the first run builds the store and the teachers' inputs; the second reuses both
until [ -f "$store/lc0_planes_history.npy" ]; do sleep 2; done
echo "store and lc0 planes built after $SECONDS s"
run distill_scratch experiment=skill_model train.init_from_checkpoint=false train.lr=4e-3 train.warmup_steps=200 \
    train.max_steps=4000 &
wait
# every run on the whole test split (188,227 positions on the repaired file), as the second
# skill table of experiments/skill_model/README.md; a run stopped by the time limit is evaluated at its last checkpoint
for name in distill_finetune distill_scratch; do
  [ -d "$out/$name" ] && run "eval_$name" stage=evaluate model=maia2_skill model.name="$name" \
      model.checkpoint="$out/$name" evaluate.positions=null evaluate.device=cuda
done
