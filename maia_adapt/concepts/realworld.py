"""Concepts from human-labelled positions: lichess puzzle themes and Strategic Test Suite themes.

Both loaders return the positions as FENs (real, un-mirrored: the model's encoder mirrors them) and a
`BoardConcepts` with one column per theme, so their labels can be probed like the computed concepts.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import chess
import torch

from ..errors import DataError, MaiaAdaptError
from ..encoding import parse_fen
from .board import BoardConcepts

_PUZZLE_COLUMNS = ("FEN", "Moves", "Themes")


def _labels(rows: list[set], keys: list, names: list[str]) -> BoardConcepts:
    """One column per key (named by `names`), True where the row's set holds the key."""
    column = {k: j for j, k in enumerate(keys)}
    labels = torch.zeros(len(rows), len(keys), dtype=torch.bool)
    for i, row_keys in enumerate(rows):
        for k in row_keys:
            if k in column:
                labels[i, column[k]] = True
    return BoardConcepts(labels, names)


def _open(path: Path):
    try:
        return path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _puzzle_position(row: dict, where: str) -> str:
    """FEN of the puzzle position: the row's FEN after the first move of `Moves` (the opponent's)."""
    try:
        board = parse_fen(row["FEN"])  # legal chess, not just well-formed
    except MaiaAdaptError as e:
        raise DataError(f"{where}: {e}") from None
    moves = row["Moves"].split()
    if not moves:
        raise DataError(f"{where}: empty Moves field")
    try:
        move = chess.Move.from_uci(moves[0])
    except ValueError:
        raise DataError(f"{where}: bad UCI move {moves[0]!r} in Moves") from None
    if not board.is_legal(move):
        raise DataError(f"{where}: first move {moves[0]} is illegal in FEN {row['FEN']!r}")
    board.push(move)
    return board.fen()


def load_puzzles(path, themes=None) -> tuple[list[str], BoardConcepts]:
    """Puzzle positions and their themes from a lichess puzzle-database CSV.

    The CSV has a header with at least the columns FEN, Moves and Themes (space-separated theme
    names). As on lichess, `FEN` is the position before the opponent's move: the puzzle position,
    returned here, is that FEN after the first UCI move of `Moves`. One row per puzzle, in file order.

    Concepts are named "puzzle:<theme>": every theme that occurs in the file, sorted by name, or the
    `themes` given, in their order (a given theme absent from the file is an all-False column).
    A missing column, bad FEN, or bad or illegal first move raises `DataError` naming file and line.
    """
    path = Path(path)
    fens, row_themes = [], []
    with _open(path) as f:
        reader = csv.DictReader(f)
        missing = [c for c in _PUZZLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: not a lichess puzzle CSV, missing column(s) {', '.join(missing)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if any(row.get(c) is None for c in _PUZZLE_COLUMNS):
                raise DataError(f"{where}: row has too few fields")
            fens.append(_puzzle_position(row, where))
            row_themes.append(set(row["Themes"].split()))
    if not fens:
        raise DataError(f"{path}: no puzzles")
    names = [t.removeprefix("puzzle:") for t in themes] if themes is not None else sorted(set().union(*row_themes))
    return fens, _labels(row_themes, names, [f"puzzle:{t}" for t in names])


# "STS(v10.0) Simplification.001": suite 10, theme "Simplification", position 1
_STS_ID = re.compile(r'\bid\s+"STS\(v(\d+)(?:\.\d+)?\)\s*(.+?)\.\d+"')


def _sts_record(line: str, where: str) -> tuple[chess.Board, int, str]:
    """(board, suite number, theme name) of one EPD line.

    Only the four FEN fields and the id matter; the move operands are not parsed, so SAN, LAN or
    UCI moves there (which differ between STS versions) cannot make a line fail."""
    fields = line.split()
    if len(fields) < 4:
        raise DataError(f"{where}: not an EPD record (fewer than 4 fields)")
    fen = " ".join(fields[:4])
    try:
        board = chess.Board(f"{fen} 0 1")
    except ValueError as e:
        raise DataError(f"{where}: bad EPD position {fen!r} ({e})") from None
    if not board.is_valid():
        raise DataError(f"{where}: EPD position {fen!r} is not a legal chess position")
    m = _STS_ID.search(line)
    if m is None:
        raise DataError(f'{where}: no STS id such as id "STS(v1.0) Undermine.001"')
    return board, int(m.group(1)), m.group(2).strip()


def load_sts(path) -> tuple[list[str], BoardConcepts]:
    """Positions of the Strategic Test Suite (EPD) and their themes as concepts "sts:<Theme>".

    The theme is read from each record's id ("STS(v1.0) Undermine.001" -> suite 1, "Undermine").
    Themes are keyed by suite number, because a suite's name is not always spelt the same way
    (v3 names suite 3 both "Knight Outposts/Repositioning/Centralization" and ".../Centralization/
    Repositioning"); each suite takes its most frequent spelling, and concepts follow suite order.

    A position that stands in several suites is returned once, labelled with all of them (v3 has
    1,500 records but 1,497 distinct positions), so no position is both positive and negative for
    a theme. FENs get move counters "0 1" (EPD has none). A bad line raises `DataError` naming file
    and line.
    """
    path = Path(path)
    index: dict[str, int] = {}  # EPD key (position, turn, castling, ep) -> row
    fens: list[str] = []
    row_suites: list[set[int]] = []
    spellings: dict[int, Counter] = {}
    with _open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            board, suite, theme = _sts_record(line, f"{path}:{line_no}")
            spellings.setdefault(suite, Counter())[theme] += 1
            row = index.setdefault(board.epd(), len(fens))
            if row == len(fens):
                fens.append(board.fen())
                row_suites.append(set())
            row_suites[row].add(suite)
    if not fens:
        raise DataError(f"{path}: no EPD records")
    suites = sorted(spellings)
    # Counter.most_common keeps first-seen order among ties, so the choice is deterministic
    names = {s: spellings[s].most_common(1)[0][0] for s in suites}
    return fens, _labels(row_suites, suites, [f"sts:{names[s]}" for s in suites])
