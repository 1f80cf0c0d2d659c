#!/usr/bin/env bash
# On one GPU: the shipped small Maia-2 (experiment=train_small) and two teacher-free attempts at a
# model that adapts to skill (Elo-balanced sampling, a 4x wider Elo embedding), trained side by side
# on the whole games file from one position store.
#   benchmarks/gpu_train_small.sh PGN OUTDIR [SECONDS_PER_RUN]
set -uo pipefail
pgn=$1; out=$2; limit=${3:-600}
store=$out/store
common=(experiment=train_small "data.pgn=[$pgn]" data.store_dir=$store data.workers=16
        train.device=cuda train.loader_workers=4 logger=none)
mkdir -p "$out"
. "$(dirname "$0")/_gpu_run.sh"
run baseline &
until [ -f "$store/manifest.json" ]; do sleep 2; done  # the first run builds the store, the others reuse it
echo "store built after $SECONDS s"
run elo_balanced train.sampling=elo_balanced &
run elo_dim_128 model.elo_dim=128 &
wait
