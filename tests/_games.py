"""Real positions for tests: the first games of the shared lichess file, read with python-chess."""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import chess
import chess.pgn
import zstandard


@lru_cache(maxsize=4)
def real_positions(pgn_zst: Path, n_games: int) -> tuple[tuple[chess.Board, chess.Move], ...]:
    """(board before the move, move played) for every ply of the first n_games games."""
    out = []
    for moves in real_games(pgn_zst, n_games):
        board = chess.Board()
        for uci in moves:
            move = chess.Move.from_uci(uci)
            out.append((board.copy(stack=False), move))
            board.push(move)
    return tuple(out)


@lru_cache(maxsize=4)
def real_games(pgn_zst: Path, n_games: int) -> tuple[tuple[str, ...], ...]:
    """The UCI move lists of the first n_games games (all start from the standard position)."""
    out = []
    with open(pgn_zst, "rb") as fh:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
        for _ in range(n_games):
            game = chess.pgn.read_game(text)
            if game is None:
                break
            out.append(tuple(m.uci() for m in game.mainline_moves()))
    return tuple(out)


LICHESS = "lichess/lichess_rated_rapid_58k.pgn.zst"


def lichess_store(shared_data: Path, folder: Path, game_filter=None, workers: int = 1):
    """A position store of the first games of the shared lichess file (GameFilter(max_games=...))."""
    from maia_adapt.data import GameFilter, build_store

    return build_store([shared_data / LICHESS], folder, game_filter or GameFilter(), workers=workers)


def random_playouts(n: int, seed: int, plies: tuple[int, int], finished: bool = True) -> list[chess.Board]:
    """Boards after a random number of random legal moves (chaotic positions: forks, pins and threats are
    common); finished=False leaves out boards where the game is over."""
    import random

    rng, out = random.Random(seed), []
    while len(out) < n:
        b = chess.Board()
        for _ in range(rng.randint(*plies)):
            moves = list(b.legal_moves)
            if not moves:
                break
            b.push(rng.choice(moves))
        if finished or not b.is_game_over():
            out.append(b.copy(stack=False))
    return out
