"""Train the shipped maia3_tiny checkpoint (see README.md here): a small Maia-3-architecture network on the
first 1,500 games of the shared lichess file, a few CPU minutes.

    MAIA_ADAPT_DATA=../shared/data python experiments/maia3_tiny/train.py [--store DIR] [--seconds 240]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter, build_store
from maia_adapt.data.store import PositionStore
from maia_adapt.model.maia3 import Maia3, Maia3Config, save_maia3
from maia_adapt.model.maia3_training import TrainingSet, train_maia3

TINY = Maia3Config(dim_vit=64, head_hid_dim=64, num_heads=4, num_blocks=4, dim_emb=32, gab_gen_size=16,
                   gab_intermediate_dim=32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="/tmp/maia3_tiny_store")
    ap.add_argument("--games", type=int, default=1500)
    ap.add_argument("--positions", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--out", default=str(ASSETS / "maia3_tiny.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # a tiny network: one thread is as fast, and does not fight for shared cores
    torch.manual_seed(0)
    store_dir = Path(args.store)
    if (store_dir / "manifest.json").is_file():
        store = PositionStore(store_dir)
    else:
        pgn = Path(os.environ.get("MAIA_ADAPT_DATA", "../shared/data")) / "lichess/lichess_rated_rapid_58k.pgn.zst"
        store = build_store([pgn], store_dir, GameFilter(max_games=args.games), workers=1)
    data = TrainingSet(store, args.positions, TINY.history)
    model = Maia3(TINY)
    log = train_maia3(model, data, steps=args.steps, batch_size=128, lr=3e-3, log_every=20, max_seconds=args.seconds)
    save_maia3(model, args.out, training=json.dumps({"games": args.games, "positions": len(data), "steps": log[-1]["step"] + 1,
                                                     "batch_size": 128, "seconds": log[-1]["seconds"]}))
    print("saved", args.out, log[-1])


if __name__ == "__main__":
    main()
