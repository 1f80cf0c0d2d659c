"""Streaming lichess PGN reader with the study's filters, fast enough to feed preprocessing.

`.pgn` and `.pgn.zst` are read as streams (never decompressed to disk) and split into game texts.
Each game is parsed by a small tokenizer: the SAN of each move is resolved against the legal moves
that the encoder generates anyway for the legal-move mask, so every position costs one legal-move
generation instead of python-chess's tree building plus SAN parsing. A game that fails to parse
(bad SAN, illegal move, broken header, truncated) is skipped and counted by reason.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import chess
import zstandard

from ..encoding.elo import elo_to_bucket

RESULTS = {"1-0": 1, "0-1": -1, "1/2-1/2": 0}
EVAL_MISSING = -32768
MATE_SCORE = 10000  # a mate in n is stored as +-(MATE_SCORE - n) centipawns

_HEADER = re.compile(r'^\[(\w+)\s+"(.*)"\]\s*$')
_TOKEN = re.compile(
    r"\{(?P<comment>[^}]*)\}"
    r"|(?P<san>(?:[NBRQK]?[a-h]?[1-8]?x?[a-h][1-8](?:=?[NBRQnbrq])?|O-O-O|O-O|0-0-0|0-0)[+#]?[!?]*)"
    r"|(?P<result>1-0|0-1|1/2-1/2|\*)"
    r"|(?P<num>\d+\.+)"
    r"|(?P<nag>\$\d+)"
    r"|(?P<var>[()])"
    r"|(?P<other>\S+)"
)
_SAN = re.compile(r"^([NBRQK])?([a-h])?([1-8])?x?([a-h][1-8])(?:=?([NBRQnbrq]))?")
_EVAL = re.compile(r"\[%eval\s+(#?)(-?\d+(?:\.\d+)?)\]")
_CLOCK = re.compile(r"\[%clk\s+(\d+):(\d+):(\d+(?:\.\d+)?)\]")
_PIECE = {"N": chess.KNIGHT, "B": chess.BISHOP, "R": chess.ROOK, "Q": chess.QUEEN, "K": chess.KING}


@dataclass
class GameFilter:
    """Which games and positions to keep; field names mirror the Hydra `data` config."""

    rated_only: bool = True
    speeds: list[str] = field(default_factory=lambda: ["Rapid"])
    require_elos: bool = True
    require_result: bool = True
    skip_bots: bool = True
    clock_threshold: Optional[float] = None
    first_n_plies: int = 10
    max_ply: int = 300
    max_games_per_elo_pair: Optional[int] = None
    max_games: Optional[int] = None

    @classmethod
    def from_any(cls, cfg) -> "GameFilter":
        """From a dataclass, dict or DictConfig holding (at least) these field names."""
        kw = {}
        for k in cls.__dataclass_fields__:
            v = cfg.get(k, _UNSET) if isinstance(cfg, dict) else getattr(cfg, k, _UNSET)
            if v is not _UNSET:
                kw[k] = list(v) if k == "speeds" else v
        return cls(**kw)


_UNSET = object()


class PGNError(ValueError):
    """A game that cannot be read: args are (reason, offending text); the reason is what gets counted."""


def parse_eval(comment: str) -> int:
    m = _EVAL.search(comment)
    if not m:
        return EVAL_MISSING
    if m.group(1):
        n = int(float(m.group(2)))
        return MATE_SCORE - abs(n) if n > 0 or m.group(2) == "0" else -(MATE_SCORE - abs(n))
    return max(-MATE_SCORE + 1000, min(MATE_SCORE - 1000, round(float(m.group(2)) * 100)))


def parse_clock(comment: str) -> Optional[float]:
    m = _CLOCK.search(comment)
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def resolve_san(board: chess.Board, san: str, legal: list[chess.Move]) -> chess.Move:
    """The legal move that `san` denotes, chosen from `legal` (the position's legal moves)."""
    core = san.rstrip("+#!?")
    if core in ("O-O", "0-0", "O-O-O", "0-0-0"):
        want_long = core.count("O") + core.count("0") == 3
        for mv in legal:
            if board.is_castling(mv) and board.is_queenside_castling(mv) == want_long:
                return mv
        raise PGNError("illegal move", san)
    m = _SAN.match(core)
    if not m:
        raise PGNError("bad SAN", san)
    piece = _PIECE.get(m.group(1), chess.PAWN)
    from_file = None if m.group(2) is None else ord(m.group(2)) - 97
    from_rank = None if m.group(3) is None else int(m.group(3)) - 1
    to_sq = chess.parse_square(m.group(4))
    promo = None if m.group(5) is None else _PIECE[m.group(5).upper()]
    found = None
    for mv in legal:
        if mv.to_square != to_sq or mv.promotion != promo or board.piece_type_at(mv.from_square) != piece:
            continue
        if board.is_castling(mv):
            continue
        if from_file is not None and chess.square_file(mv.from_square) != from_file:
            continue
        if from_rank is not None and chess.square_rank(mv.from_square) != from_rank:
            continue
        if found is not None:
            raise PGNError("ambiguous SAN", san)
        found = mv
    if found is None:
        raise PGNError("illegal move", san)
    return found


@dataclass
class Game:
    headers: dict[str, str]
    moves_text: str
    index: int  # position of the game in its source file
    source: str


def split_games(lines: Iterator[str], source: str, stats: Optional[dict] = None) -> Iterator[Game]:
    """Split a PGN line stream into games: a header line after movetext starts a new game."""
    headers: dict[str, str] = {}
    movetext: list[str] = []
    index = 0
    bad_header = False
    for line in lines:
        if line.startswith("["):
            m = _HEADER.match(line)
            # a new game starts at a header after movetext, or at an [Event] after a damaged header
            if movetext or (m and m.group(1) == "Event" and (headers or bad_header)):
                yield _finish(headers, movetext, bad_header, index, source)
                index += 1
                headers, movetext, bad_header = {}, [], False
            if m:
                headers[m.group(1)] = m.group(2)
            else:
                bad_header = True
        elif line.strip():
            movetext.append(line.strip())
    if movetext or headers or bad_header:
        yield _finish(headers, movetext, bad_header, index, source)


def _finish(headers, movetext, bad_header, index, source) -> Game:
    if bad_header:
        return Game({"__bad__": "1"}, "", index, source)
    return Game(headers, " ".join(movetext), index, source)


def open_text(path) -> Iterator[str]:
    """Lines of a .pgn or .pgn.zst file. A corrupt zstd stream ends the iteration with PGNStreamError."""
    path = Path(path)
    if not path.is_file():
        from ..errors import DataError

        raise DataError(f"PGN file {path} {'is a directory' if path.is_dir() else 'not found'}: "
                        "expected a .pgn or .pgn.zst file")
    with open(path, "rb") as raw:
        if path.suffix == ".zst":
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace")
        else:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        it = iter(text)
        while True:
            try:
                line = next(it)
            except StopIteration:
                return
            except zstandard.ZstdError as e:
                raise PGNStreamError(f"{path}: compressed stream is corrupt after {raw.tell():,} bytes ({e})") from None
            yield line


class PGNStreamError(IOError):
    pass


def header_reason(h: dict[str, str], filt: GameFilter) -> Optional[str]:
    """Why a game is filtered out by its headers, or None to keep it."""
    if "__bad__" in h:
        return "broken header"
    event = h.get("Event", "")
    if filt.rated_only and "Rated" not in event:
        return "not rated"
    if filt.speeds and not any(s in event for s in filt.speeds):
        return "other speed"
    if filt.skip_bots and "BOT" in (h.get("WhiteTitle", "").upper(), h.get("BlackTitle", "").upper()):
        return "bot"
    if filt.require_elos and not (h.get("WhiteElo", "").isdigit() and h.get("BlackElo", "").isdigit()):
        return "missing Elo"
    if filt.require_result and h.get("Result") not in RESULTS:
        return "unknown result"
    return None


def elo_pair(h: dict[str, str]) -> tuple[int, int]:
    w = elo_to_bucket(int(h.get("WhiteElo", "0") or 0)) if h.get("WhiteElo", "").isdigit() else 0
    b = elo_to_bucket(int(h.get("BlackElo", "0") or 0)) if h.get("BlackElo", "").isdigit() else 0
    return (max(w, b), min(w, b))


def iter_moves(game: Game):
    """Yield (board before the move, SAN, comment after the move) through the game's mainline.

    The board is the same object, pushed after each yield; callers copy what they keep.
    """
    fen = game.headers.get("FEN")
    try:
        board = chess.Board(fen) if fen else chess.Board()
    except ValueError:
        raise PGNError("bad FEN header", fen) from None
    tokens = list(_TOKEN.finditer(game.moves_text))
    depth = 0
    pending = None  # (san) waiting for its comment
    out = []
    for t in tokens:
        kind = t.lastgroup
        if kind == "var":
            depth += 1 if t.group() == "(" else -1
            continue
        if depth > 0 or kind in ("num", "nag"):
            continue
        if kind == "comment":
            if pending is not None:
                out.append((pending, t.group("comment")))
                pending = None
            continue
        if kind == "san":
            if pending is not None:
                out.append((pending, ""))
            pending = t.group("san")
        elif kind == "result":
            break
        elif kind == "other":
            raise PGNError("bad token", t.group()[:20])
    if pending is not None:
        out.append((pending, ""))
    return board, out
