"""Games of a Maia-2 playing itself at chosen Elo buckets, written as PGN.

This is how the project makes its own small position corpus (the embedded default): all games of a
batch advance together, one batched forward pass per ply, moves sampled from the legal-move policy.
"""
from __future__ import annotations

import io
from pathlib import Path

import chess
import chess.pgn
import numpy as np
import torch
from tqdm import tqdm

from ..encoding import board_planes, decode_move, legal_mask
from ..encoding.elo import bucket_midpoint
from ..model.inference import masked_probs


@torch.no_grad()
def play_games(
    model,
    buckets_white,
    buckets_black,
    max_plies: int = 200,
    temperature: float = 1.0,
    seed: int = 0,
    opening_plies: int = 0,
) -> list[chess.pgn.Game]:
    """One game per (white bucket, black bucket) pair; `opening_plies` random legal moves first for variety."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    bw, bb = np.asarray(buckets_white), np.asarray(buckets_black)
    boards = [chess.Board() for _ in range(len(bw))]
    for _ in range(opening_plies):
        for b in boards:
            if not b.is_game_over():
                moves = list(b.legal_moves)
                b.push(moves[rng.integers(len(moves))])
    device = next(model.parameters()).device
    for _ in tqdm(range(max_plies), desc="self-play plies", leave=False):
        live = [i for i, b in enumerate(boards) if not b.is_game_over(claim_draw=False) and not b.is_repetition(3)]
        if not live:
            break
        sub = [boards[i] for i in live]
        white = np.array([b.turn == chess.WHITE for b in sub])
        es = torch.from_numpy(np.where(white, bw[live], bb[live])).long()
        eo = torch.from_numpy(np.where(white, bb[live], bw[live])).long()
        x = torch.from_numpy(board_planes(sub)).to(device)
        legal = torch.from_numpy(legal_mask(sub)).to(device)
        logits, _, _ = model(x, es.to(device), eo.to(device))
        probs = masked_probs(logits / temperature, legal).cpu()
        picks = torch.multinomial(probs, 1, generator=gen).squeeze(1).tolist()
        for b, w, k in zip(sub, white, picks):
            b.push(chess.Move.from_uci(decode_move(k, bool(w))))
    games = []
    for i, b in enumerate(boards):
        game = chess.pgn.Game.from_board(b)
        outcome = b.outcome(claim_draw=True)
        game.headers.update(
            Event="Rated Rapid game (maia-adapt self-play)",
            Site="maia-adapt",
            White=f"maia2-bucket{bw[i]}",
            Black=f"maia2-bucket{bb[i]}",
            WhiteElo=str(bucket_midpoint(int(bw[i]))),
            BlackElo=str(bucket_midpoint(int(bb[i]))),
            TimeControl="600+0",
            Result=outcome.result() if outcome else "1/2-1/2",
            Termination="Normal" if outcome else "Adjudicated draw (ply limit)",
        )
        games.append(game)
    return games


def write_selfplay_corpus(model, path, games_per_pair: int = 4, pairs: str = "diagonal", seed: int = 0,
                          batch: int = 128, **kw) -> int:
    """Play games at every Elo bucket (pairs='diagonal': same bucket both sides; 'all': 11 x 11) and
    write them as PGN (zstd-compressed when the path ends in .zst). Returns the number of games."""
    import zstandard

    if pairs == "diagonal":
        grid = [(b, b) for b in range(11)]
    else:
        grid = [(w, k) for w in range(11) for k in range(11)]
    todo = [p for p in grid for _ in range(games_per_pair)]
    buf = io.StringIO()
    for s in tqdm(range(0, len(todo), batch), desc="self-play batches"):
        chunk = todo[s : s + batch]
        games = play_games(model, [w for w, _ in chunk], [b for _, b in chunk], seed=seed + s, **kw)
        for i, g in enumerate(games):
            # a Site per game: train/val/test splits are drawn by game from it
            g.headers["Site"] = f"maia-adapt/selfplay/{seed}/{s + i}"
            print(g, file=buf, end="\n\n")
    data = buf.getvalue().encode()
    path = Path(path)
    if path.suffix == ".zst":
        data = zstandard.ZstdCompressor(level=19).compress(data)
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, data)
    return len(todo)


def main(argv=None) -> None:
    """python -m maia_adapt.data.selfplay [--checkpoint PATH] [--out PATH] [--games-per-bucket N]"""
    import argparse

    from ..layout import ASSETS
    from ..model import load_model

    ap = argparse.ArgumentParser(description="Write a self-play PGN corpus of a Maia-2 at every Elo bucket.")
    ap.add_argument("--checkpoint", default=str(ASSETS / "maia2_small.safetensors"))
    ap.add_argument("--out", default=str(ASSETS / "selfplay.pgn.zst"))
    ap.add_argument("--games-per-bucket", type=int, default=40)
    ap.add_argument("--pairs", choices=("diagonal", "all"), default="diagonal")
    ap.add_argument("--max-plies", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    model = load_model(a.checkpoint)
    n = write_selfplay_corpus(model, a.out, games_per_pair=a.games_per_bucket, pairs=a.pairs, seed=a.seed,
                              max_plies=a.max_plies)
    print(f"{n} games written to {a.out}")


if __name__ == "__main__":
    main()
