"""A cached position store is reused only for the very files it was built from (a games file replaced
by another of the same size, with its modification time set back by cp -p, rsync -t, tar or a repaired
download, gets a new store), and a store is never rewritten in place under a process reading it."""
import io
import os

import chess.pgn
import numpy as np
import pytest

from maia_adapt.config import DataConfig
from maia_adapt.data.preprocess import data_fingerprint, open_or_build_store
from maia_adapt.errors import DataError

def _fens_before_each_move(pgn_text: str) -> list[str]:
    board, out = chess.Board(), []
    for move in chess.pgn.read_game(io.StringIO(pgn_text)).mainline_moves():
        out.append(board.fen())
        board.push(move)
    return out


def _stored_fens(store) -> list[str]:
    return store.fens(np.arange(len(store)))


HEADERS = '[Event "Rated Rapid game"]\n[WhiteElo "1500"]\n[BlackElo "1600"]\n[Result "1-0"]\n\n'


def test_a_replaced_games_file_of_the_same_size_and_mtime_is_not_served_from_the_old_store(tmp_path):
    pgn = tmp_path / "games.pgn"
    original = HEADERS + "1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 1-0\n"
    pgn.write_text(original)
    cfg = DataConfig(name="t", pgn=[str(pgn)], rated_only=False, speeds=[], first_n_plies=0, workers=1,
                     val_fraction=0.0, test_fraction=0.0)
    old = open_or_build_store(cfg, tmp_path / "cache")
    assert _stored_fens(old) == _fens_before_each_move(original)
    st = pgn.stat()
    replacement = HEADERS + "1. d4 d5 2. Nf3 Nf6 3. Bf4 e6 1-0\n"
    assert len(replacement) == st.st_size
    pgn.write_text(replacement)
    os.utime(pgn, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p or rsync -t leave
    assert pgn.stat().st_size == st.st_size and pgn.stat().st_mtime_ns == st.st_mtime_ns
    new = open_or_build_store(cfg, tmp_path / "cache")
    assert new.path != old.path and data_fingerprint(cfg) in new.path.name
    assert _stored_fens(new) == _fens_before_each_move(replacement)
    # unchanged, the store is reused as it is
    assert open_or_build_store(cfg, tmp_path / "cache").path == new.path


def test_a_rebuilt_store_does_not_change_under_a_process_reading_the_old_one(tmp_path):
    pgn = tmp_path / "games.pgn"
    first = HEADERS + "1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 1-0\n"
    pgn.write_text(first)
    # a fixed data.store_dir: the new inputs' store goes to the same folder as the old one
    cfg = DataConfig(name="t", pgn=[str(pgn)], store_dir=str(tmp_path / "store"), rated_only=False, speeds=[],
                     first_n_plies=0, workers=1, val_fraction=0.0, test_fraction=0.0)
    reader = open_or_build_store(cfg, tmp_path / "cache")
    moves = reader.column("move")  # memory-mapped, as every stage reads a store
    before = np.array(moves)
    # other games with as many positions, so the files keep their sizes
    second = HEADERS + "1. d4 d5 2. Nf3 Nf6 3. Bf4 e6 1-0\n"
    pgn.write_text(second)
    rebuilt = open_or_build_store(cfg, tmp_path / "cache")
    assert _stored_fens(rebuilt) == _fens_before_each_move(second)
    assert not np.array_equal(np.array(rebuilt.column("move")), before)
    assert np.array_equal(np.array(moves), before)  # written in place, the reader saw the new moves
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_games_without_positions_leave_no_store_in_the_cache(tmp_path):
    pgn = tmp_path / "casual.pgn"
    pgn.write_text('[Event "Casual Rapid game"]\n[WhiteElo "1500"]\n[BlackElo "1600"]\n[Result "1-0"]\n\n1. e4 e5 1-0\n')
    cfg = DataConfig(name="t", pgn=[str(pgn)], first_n_plies=0, workers=1)
    with pytest.raises(DataError, match=r"casual.pgn'\] pass the data filters \(empty position set\); games read: 1, "
                                        r"skipped: \{'not rated': 1\}"):
        open_or_build_store(cfg, tmp_path / "cache")
    assert list((tmp_path / "cache" / "stores").iterdir()) == []
    # an empty store an older version cached is removed, not served
    from maia_adapt.data import GameFilter, build_store

    old = tmp_path / "cache" / "stores" / f"t-{data_fingerprint(cfg)}"
    build_store([pgn], old, GameFilter.from_any(cfg), workers=1, fingerprint=data_fingerprint(cfg))
    with pytest.raises(DataError, match="empty position set"):
        open_or_build_store(cfg, tmp_path / "cache")
    assert list((tmp_path / "cache" / "stores").iterdir()) == []
