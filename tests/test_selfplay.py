"""Self-play corpora: legal games at the requested Elo buckets, readable by our own PGN pipeline."""
import chess.pgn
import io

import torch
import zstandard

from maia_adapt.data import GameFilter, build_store
from maia_adapt.data.selfplay import play_games, write_selfplay_corpus
from maia_adapt.model import Maia2, Maia2Config

TINY = Maia2Config(dim_cnn=8, num_blocks_cnn=1, dim_vit=32, elo_dim=4, heads=2, dim_head=16)


def test_games_are_legal_and_labelled(tmp_path):
    torch.manual_seed(0)
    model = Maia2(TINY).eval()
    games = play_games(model, [0, 5, 10], [10, 5, 0], max_plies=40, seed=1)
    assert [g.headers["WhiteElo"] for g in games] == ["1000", "1550", "2100"]
    for g in games:
        moves = list(g.mainline_moves())
        assert 0 < len(moves) <= 40
        board = g.board()
        for m in moves:  # replaying through python-chess checks legality
            assert m in board.legal_moves
            board.push(m)
        assert g.headers["Result"] in ("1-0", "0-1", "1/2-1/2")
    again = play_games(model, [0, 5, 10], [10, 5, 0], max_plies=40, seed=1)
    assert [str(g.mainline_moves()) for g in games] == [str(g.mainline_moves()) for g in again]


def test_corpus_round_trips_through_the_store(tmp_path):
    torch.manual_seed(0)
    model = Maia2(TINY).eval()
    n = write_selfplay_corpus(model, tmp_path / "sp.pgn.zst", games_per_pair=1, max_plies=30, seed=2)
    assert n == 11
    text = zstandard.ZstdDecompressor().stream_reader(open(tmp_path / "sp.pgn.zst", "rb")).read().decode()
    assert text.count("[Event ") == 11
    store = build_store([tmp_path / "sp.pgn.zst"], tmp_path / "store", GameFilter(rated_only=False, speeds=[], first_n_plies=0), workers=1)
    assert store.manifest["summary"]["games_kept"] == 11
    assert sorted(set(store.column("elo_self").tolist())) == list(range(11))
    first = chess.pgn.read_game(io.StringIO(text))
    assert store.fens([0])[0] == first.board().fen()


def test_embedded_corpus_gives_every_split(tmp_path):
    from maia_adapt.config import ASSETS
    from maia_adapt.data import GameFilter, build_store

    store = build_store([ASSETS / "selfplay.pgn.zst"], tmp_path / "s", GameFilter(), workers=1)
    sites = [g["site"] for g in store.games]
    assert len(set(sites)) == len(sites) == 440  # one Site per game: splits are drawn by game
    sizes = {s: len(store.split_indices(s)) for s in ("train", "val", "test")}
    assert sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0
