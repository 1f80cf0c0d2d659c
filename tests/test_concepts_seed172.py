"""The seed172 family: the 172 concepts of the study's revision, as its code defines them.

Hand-built positions show each category's concepts firing exactly when they should (the seed's
quirks included); every position is also checked colour-flipped with Black to move, which must give
the same labels. Positions from random playouts check the bitboard code against a plain
square-by-square reading of the same definitions. docs/concepts_seed172.md has the check against the
seed's own code on real positions."""

import chess
from _games import random_playouts
import pytest
import torch
from hydra import compose, initialize_config_dir

from maia_adapt.concepts import (
    FAMILIES,
    SEED172_CATEGORIES,
    SEED172_SEED_NAMES,
    all_position_concepts,
    check_families,
    concept_specs,
    position_concepts,
    seed172_concepts,
    select_families,
)
from maia_adapt.config import CONF_DIR, validate
from maia_adapt.errors import ConfigError


def _on(fen: str) -> set[str]:
    """The seed172 concepts a position has (short names, without the "seed172_" prefix), checked to
    be the same for its colour-flipped twin."""
    board = chess.Board(fen)
    c = seed172_concepts([board, board.mirror()])
    assert torch.equal(c.labels[0], c.labels[1]), f"mirrored twin of {fen} differs"
    return {n.removeprefix("seed172_") for n, v in zip(c.names, c.labels[0].tolist()) if v}


def _category(on: set[str], category: str) -> set[str]:
    short = {s.name.removeprefix("seed172_") for s in concept_specs() if s.category == category}
    return on & short


# ---------------------------------------------------------------- the family

def test_the_family_is_the_seeds_172_concepts_in_its_5_categories_and_order():
    specs = [s for s in concept_specs() if s.family == "seed172"]
    assert len(specs) == 172 == len({s.name for s in specs})
    counts = {c: sum(s.category == c for s in specs) for c in SEED172_CATEGORIES}
    assert counts == {"king_queen_safety": 4, "square_threats": 128, "tactical_patterns_forks": 7,
                      "tactical_patterns_pins": 10, "positional_structure": 23}
    # categories are contiguous, in the seed's order; no other family has a category
    assert [s.category for s in specs] == [c for c in SEED172_CATEGORIES for _ in range(counts[c])]
    assert all(not s.category for s in concept_specs() if s.family != "seed172")
    assert all(s.definition and "\n" not in s.definition for s in specs)
    # the seed's names, one each, in its order
    assert list(SEED172_SEED_NAMES) == [s.name for s in specs]
    seed = list(SEED172_SEED_NAMES.values())
    assert seed[:4] == ["king_danger_mine", "king_danger_opponent", "can_capture_queen_mine", "can_capture_queen_opponent"]
    assert seed[4] == "defensive_threat_a1" and seed[68] == "offensive_threat_a1" and seed[131] == "offensive_threat_h8"
    assert "rook_fork_mine" not in seed and "rook_fork_opponent" in seed
    assert SEED172_SEED_NAMES["seed172_opp_capture@d8"] == "capture_possible_d1_opponent"
    assert seed172_concepts([chess.Board()]).names == [s.name for s in specs]


def test_families_and_categories_are_selected_and_typos_refused():
    check_families(["seed172", "threat", *[f"seed172:{c}" for c in SEED172_CATEGORIES]], "probe.families")
    for bad in ("seed172:forks", "seed172:", "seed-172", "threat:square_threats"):
        with pytest.raises(ConfigError, match=rf"^probe.families: unknown family '{bad}'"):
            check_families([bad], "probe.families")
    boards = [chess.Board(), chess.Board("4k3/8/8/b7/8/8/3B4/4K3 w - - 0 1")]
    every = all_position_concepts(boards)
    assert len(every.names) == 1158 and "seed172" in FAMILIES
    for families in (["seed172"], ["seed172:tactical_patterns_pins"], ["threat", "seed172:king_queen_safety"],
                     ["seed172:square_threats", "seed172"], ["board-state", "strategic", "study"]):
        picked, specs = select_families(every, families)
        alone = position_concepts(boards, families)  # only the families asked for are computed
        assert alone.names == picked.names == [s.name for s in specs]
        assert torch.equal(alone.labels, picked.labels)
    pins, _ = select_families(every, ["seed172:tactical_patterns_pins"])
    assert len(pins.names) == 10 and pins.labels[1].tolist() == [n == "seed172_own_pinned_bishop" for n in pins.names]
    assert len(position_concepts(boards, ["threat", "seed172:king_queen_safety"]).names) == 132


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_the_app_takes_the_family_and_a_category_and_names_the_key_of_a_typo():
    validate(_cfg("stage=probe", "probe.families=[seed172]"))
    validate(_cfg("stage=threats", "threats.families=[threat,seed172:tactical_patterns_forks]"))
    for key in ("probe.families", "threats.families"):
        with pytest.raises(ConfigError) as e:
            validate(_cfg(f"{key}=[seed712]"))
        assert str(e.value).startswith(f"{key}: unknown family 'seed712'") and "\n" not in str(e.value)


# ---------------------------------------------------------------- each category on hand-built positions

def test_king_danger_needs_five_attacked_squares_next_to_the_king():
    # Ke1: rook a2 attacks d2 e2 f2, bishop h3 attacks f1, bishop a4 attacks d1: 5 of 5
    assert _category(_on("4k3/8/8/8/b7/7b/r7/4K3 w - - 0 1"), "king_queen_safety") == {"own_king_danger"}
    assert "own_king_danger" not in _on("4k3/8/8/8/8/7b/r7/4K3 w - - 0 1")  # 4 of 5
    # the checking rook h1 does not attack d1 behind the king (the seed's attack test): 4, not 5
    assert "own_king_danger" not in _on("4k3/8/8/8/8/8/r7/4K2r w - - 0 1")
    assert "own_king_danger" in _on("4k3/8/8/8/b7/8/r7/4K2r w - - 0 1")
    # a corner king has 3 squares next to it: never in danger, all 3 attacked or not
    assert "own_king_danger" not in _on("7k/8/8/8/8/8/1q6/K6r w - - 0 1")
    # the opponent's king, attacked by the side to move's pieces
    assert "opp_king_danger" in _on("4k3/R7/7B/B7/8/8/8/4K3 w - - 0 1")


def test_queen_captures_are_legal_captures_for_either_side():
    assert _category(_on("4k3/2r5/5q2/3N4/8/8/8/4K3 w - - 0 1"), "king_queen_safety") == {"own_can_capture_queen"}
    # the knight c2 checks the king and attacks the queen a1: with the turn passed it takes it
    assert _category(_on("4k3/8/8/8/8/8/2n5/Q3K3 w - - 0 1"), "king_queen_safety") == {"opp_can_capture_queen"}


def test_forks_are_unpinned_pieces_attacking_two_forkable_enemy_pieces():
    forks = lambda fen: _category(_on(fen), "tactical_patterns_forks")
    assert forks("4k3/8/8/3n1b2/4P3/8/8/4K3 w - - 0 1") == {"own_pawn_fork"}
    assert forks("4k3/8/8/3p1p2/4P3/8/8/4K3 w - - 0 1") == set()  # pawns are not forked
    assert forks("4k3/8/8/4p3/3N1B2/8/8/4K3 w - - 0 1") == {"opp_pawn_fork"}
    assert forks("4k3/2r5/5q2/3N4/8/8/8/4K3 w - - 0 1") == {"own_knight_fork"}  # Nd5: rook c7, queen f6
    assert forks("4k3/2r5/5b2/3N4/8/8/8/4K3 w - - 0 1") == set()  # a knight does not fork a bishop
    assert forks("3rk3/2r5/5q2/3N4/8/8/8/3K4 w - - 0 1") == set()  # the knight is pinned to its king
    assert forks("4k3/8/8/8/8/8/2n5/Q3K3 w - - 0 1") == {"opp_knight_fork"}  # the king counts: a check
    assert forks("4k3/8/1r3q2/8/3B4/8/8/4K3 w - - 0 1") == {"own_bishop_fork"}
    assert forks("6k1/8/8/8/4r2K/8/8/4Q3 w - - 0 1") == {"opp_rook_fork"}  # king h4 and queen e1
    # the same rook pinned to its king on the e-file (the queen it attacks stands on the pin line)
    assert forks("4k3/8/8/8/4r2K/8/8/4Q3 w - - 0 1") == set()
    # there is no own rook fork in the seed's 172
    assert not any("own_rook_fork" in s.name for s in concept_specs())


def test_pins_are_absolute_pins_to_the_king():
    pins = lambda fen: _category(_on(fen), "tactical_patterns_pins")
    assert pins("4k3/8/8/b7/8/8/3B4/4K3 w - - 0 1") == {"own_pinned_bishop"}
    assert pins("4r1k1/8/8/8/8/8/4R3/4K3 w - - 0 1") == {"own_pinned_rook"}  # free to move along the file
    assert pins("4r1k1/8/8/8/8/8/4R3/4Q1K1 w - - 0 1") == set()  # pinned to a queen: not a pin here
    assert pins("4k3/8/8/8/4r2K/8/8/4Q3 w - - 0 1") == {"opp_pinned_rook"}
    assert pins("4k3/4q3/8/8/8/8/8/4RK2 b - - 0 1") == {"own_pinned_queen"}  # Black to move: own is Black


def test_open_files_and_bishop_pairs_as_the_seed_judges_them():
    struct = lambda fen: _category(_on(fen), "positional_structure")
    # an own rook on the open d-file, an enemy rook on the open a-file: each side controls a file
    assert struct("r3k3/8/8/8/8/8/8/3RK3 w - - 0 1") == {"own_open_file_control", "opp_open_file_control"}
    assert struct("3rk3/8/8/8/8/8/8/3RK3 w - - 0 1") == {"contested_open_file"}
    assert struct("3rk3/3p4/8/8/8/8/8/3RK3 w - - 0 1") == set()  # a pawn closes the file
    # exactly two bishops, of any colours: two on dark squares count, three do not
    assert "own_bishop_pair" in struct("4k3/8/8/8/8/8/8/2B1KB2 w - - 0 1")
    assert "own_bishop_pair" in struct("4k3/8/8/8/8/8/3B4/2B1K3 w - - 0 1")
    assert "own_bishop_pair" not in struct("4k3/8/8/8/8/8/3B4/2B1KB2 w - - 0 1")


def test_connected_rooks_keep_the_seeds_same_file_test():
    rooks = lambda fen: _category(_on(fen), "positional_structure") & {"own_connected_rooks", "opp_connected_rooks"}
    assert rooks("4k3/8/8/8/8/8/8/R6R w - - 0 1") == {"own_connected_rooks"}
    assert rooks("4k3/8/8/8/8/8/8/R2K3R w - - 0 1") == set()  # the king between, on a rank
    # on a file only the file's first-rank square is tested: a knight between does not matter ...
    assert rooks("4k3/8/R7/8/N7/R7/8/4K3 w - - 0 1") == {"own_connected_rooks"}
    assert rooks("4k3/8/R7/8/N7/R7/8/N3K3 w - - 0 1") == set()  # ... a piece on a1 does
    assert rooks("4k3/8/8/R7/8/8/8/R3K3 w - - 0 1") == set()  # a rook on a1 itself blocks a1
    assert rooks("4k3/8/8/8/8/8/R7/R3K3 w - - 0 1") == {"own_connected_rooks"}  # neighbouring ranks
    # seen from the side to move: Black's rooks a6 and a3 (a3 and a6 mirrored), a8 empty
    assert rooks("4k3/8/r7/8/n7/r7/8/4K3 b - - 0 1") == {"own_connected_rooks"}
    assert rooks("n3k3/8/r7/8/8/r7/8/4K3 b - - 0 1") == set()
    # ours and the study's test the squares between
    lab = dict(zip((c := all_position_concepts(["4k3/8/R7/8/N7/R7/8/4K3 w - - 0 1"])).names, c.labels[0].tolist()))
    assert lab["seed172_own_connected_rooks"] and not lab["own_connected_rooks"] and not lab["study_own_connected_rooks"]


def test_captures_on_the_seeds_squares_each_side_named_from_the_side_to_move():
    caps = lambda fen: {n for n in _on(fen) if "capture@" in n}
    assert caps("4k3/8/8/8/8/8/8/2Kn4 w - - 0 1") == {"own_capture@d1"}
    assert caps("4k3/8/8/6n1/8/8/8/2B1K3 w - - 0 1") == {"own_capture@g5"}
    # with the turn passed the opponent takes on d8 (the seed's capture_possible_d1_opponent) or g4
    assert caps("3Nk3/8/8/8/8/8/8/4K3 w - - 0 1") == {"opp_capture@d8"}
    assert caps("2b1k3/8/8/8/6N1/8/8/4K3 w - - 0 1") == {"opp_capture@g4"}
    # Black to move: Black's king takes on d8, which Black sees as its d1
    assert caps("3nk3/8/8/8/8/8/8/3K4 b - - 0 1") == set() and caps("3Nk3/8/8/8/8/8/8/4K3 b - - 0 1") == {"own_capture@d1"}


# ---------------------------------------------------------------- against a plain reading, generated positions

def _playouts(n: int, seed: int = 7) -> list[chess.Board]:
    """Positions after random legal moves: chaotic boards, so forks and pins are common."""
    return random_playouts(n, seed, (6, 90))


def _plain(b: chess.Board) -> dict[str, bool]:
    """The 44 non-threat seed172 concepts of a White-to-move board, square by square (SquareSets,
    is_pinned, is_attacked_by, the legal moves of a turn-flipped board)."""
    out = {}
    forked = {chess.PAWN: (2, 3, 4, 5, 6), chess.KNIGHT: (4, 5, 6), chess.BISHOP: (4, 5, 6), chess.ROOK: (5, 6)}
    flipped = b.copy(stack=False)
    flipped.turn = chess.BLACK
    for side, color in (("own", chess.WHITE), ("opp", chess.BLACK)):
        king = b.king(color)
        out[f"{side}_king_danger"] = sum(b.is_attacked_by(not color, sq) for sq in chess.SquareSet(chess.BB_KING_ATTACKS[king])) >= 5
        for pt, targets in forked.items():
            if (side, pt) == ("own", chess.ROOK):
                continue
            out[f"{side}_{chess.piece_name(pt)}_fork"] = any(
                sum(b.color_at(t) == (not color) and b.piece_type_at(t) in targets for t in b.attacks(sq)) >= 2
                for sq in b.pieces(pt, color) if not b.is_pinned(color, sq))
        for pt in (chess.PAWN, chess.KNIGHT, chess.BISHOP, chess.ROOK, chess.QUEEN):
            out[f"{side}_pinned_{chess.piece_name(pt)}"] = any(b.is_pinned(color, sq) for sq in b.pieces(pt, color))
        rooks = list(b.pieces(chess.ROOK, color))
        out[f"{side}_connected_rooks"] = any(
            (chess.square_rank(r) == chess.square_rank(s) and not chess.SquareSet(chess.between(r, s)) & b.occupied)
            or (chess.square_file(r) == chess.square_file(s)
                and (abs(r - s) == 8 or b.piece_at(chess.square(chess.square_file(r), 0)) is None))
            for r in rooks for s in rooks if r < s)
        out[f"{side}_bishop_pair"] = len(b.pieces(chess.BISHOP, color)) == 2
        board = b if color == chess.WHITE else flipped
        queens = b.pieces(chess.QUEEN, not color)
        out[f"{side}_can_capture_queen"] = any(m.to_square in queens for m in board.legal_moves)
        for name in ("d1", "d2", "d3", "e1", "e2", "e3", "g5", "b5"):
            sq = chess.parse_square(name) if color == chess.WHITE else chess.square_mirror(chess.parse_square(name))
            out[f"{side}_capture@{chess.square_name(sq)}"] = any(
                m.to_square == sq and board.is_capture(m) for m in board.legal_moves)
    open_files = [f for f in range(8) if not b.pieces_mask(chess.PAWN, chess.WHITE) & chess.BB_FILES[f]
                  and not b.pieces_mask(chess.PAWN, chess.BLACK) & chess.BB_FILES[f]]
    heavy = lambda color, f: bool((b.pieces_mask(chess.ROOK, color) | b.pieces_mask(chess.QUEEN, color)) & chess.BB_FILES[f])
    out["own_open_file_control"] = any(heavy(chess.WHITE, f) and not heavy(chess.BLACK, f) for f in open_files)
    out["opp_open_file_control"] = any(heavy(chess.BLACK, f) and not heavy(chess.WHITE, f) for f in open_files)
    out["contested_open_file"] = any(heavy(chess.WHITE, f) and heavy(chess.BLACK, f) for f in open_files)
    return out


def test_the_bitboard_code_equals_a_plain_reading_on_generated_positions():
    boards = _playouts(300)
    got = all_position_concepts(boards)
    col = {n: j for j, n in enumerate(got.names)}
    for i, board in enumerate(boards):
        b = board.mirror() if board.turn == chess.BLACK else board
        plain = _plain(b)
        assert len(plain) == 44
        for name, value in plain.items():
            assert got.labels[i, col[f"seed172_{name}"]].item() == value, f"{name} on {board.fen()}"
    # the concepts the seed's code shares with other families are their columns
    same = {f"seed172_{k}@{s}": f"{k}@{s}" for k in ("defensive", "offensive") for s in chess.SQUARE_NAMES}
    same |= {f"seed172_own_capture@{s}": f"capture_possible@{s}" for s in ("d1", "d2", "d3", "e1", "e2", "e3", "g5", "b5")}
    same |= {f"seed172_{s}_{c}": f"{'study_' * (c != 'can_capture_queen')}{s}_{c}" for s in ("own", "opp")
             for c in ("can_capture_queen", "bishop_pair", "open_file_control")}
    same["seed172_contested_open_file"] = "contested_open_file"
    for ours, other in same.items():
        assert torch.equal(got.labels[:, col[ours]], got.labels[:, col[other]]), ours
    # the playouts do exercise the rare concepts
    seen = got.labels[:, [col[n] for n in SEED172_SEED_NAMES]].sum(0)
    names = list(SEED172_SEED_NAMES)
    for n in ("own_knight_fork", "opp_knight_fork", "own_pawn_fork", "own_pinned_bishop", "opp_pinned_queen",
              "own_king_danger", "own_capture@e2", "opp_capture@e7"):
        assert seen[names.index(f"seed172_{n}")] > 0, n
