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

from ..encoding.elo import ELO_RANGE, elo_to_bucket

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
# ASCII digits only: str.isdigit() also accepts "1²00"; a rating outside ELO_RANGE is a damaged header
_ELO = re.compile(r"[0-9]{1,6}")
_MISSING_ELO = ("", "?", "-")
_TERMINATION = ("1-0", "0-1", "1/2-1/2", "*")


@dataclass
class GameFilter:
    """Which games and positions to keep; field names mirror the Hydra `data` config."""

    rated_only: bool = True
    speeds: list[str] = field(default_factory=lambda: ["Rapid"])
    require_elos: bool = True
    require_result: bool = True
    skip_bots: bool = True
    # lichess marks games from a set-up position Variant "From Position"; they are standard chess and
    # stored from their real start position when kept
    keep_from_position: bool = False
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
    """Split a PGN line stream into games: a header line after movetext starts a new game.

    When the stream breaks (PGNStreamError: a corrupt or cut-short file), the game being read is
    yielded only if it is whole (its movetext ended with a result marker and a newline), then the
    error propagates: a game cut off mid-movetext is never taken for a complete one.
    """
    headers: dict[str, str] = {}
    movetext: list[str] = []
    index = 0
    bad_header = False
    line = "\n"
    try:
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
    except PGNStreamError:
        if movetext and not bad_header and line.endswith("\n") and movetext[-1].rsplit(None, 1)[-1] in _TERMINATION:
            yield _finish(headers, movetext, bad_header, index, source)
        raise
    if movetext or headers or bad_header:
        yield _finish(headers, movetext, bad_header, index, source)


def _finish(headers, movetext, bad_header, index, source) -> Game:
    if bad_header:
        return Game({"__bad__": "1"}, "", index, source)
    return Game(headers, " ".join(movetext), index, source)


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every zstd frame in a file, noting whether the last one was cut short.

    zstandard's stream_reader ends silently at a frame cut off mid-way (an unfinished download), so
    the frames are decoded here one by one and `truncated` says whether the file ended inside one.
    """

    def __init__(self, raw, chunk: int = 1 << 16):  # small reads: a corrupt chunk loses little text
        self.raw, self.chunk = raw, chunk
        self.dctx = zstandard.ZstdDecompressor()
        self.frame = None
        self.buf, self.pos = b"", 0
        self.truncated = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.pos >= len(self.buf):
            data = self.raw.read(self.chunk)
            if not data:
                # no frame at all (an empty file) is cut short too: a download that stopped at byte 0
                self.truncated = self.frame is None or not self.frame.eof
                return 0
            out = []
            while data:
                if self.frame is None or self.frame.eof:
                    self.frame = self.dctx.decompressobj()
                out.append(self.frame.decompress(data))
                data = self.frame.unused_data if self.frame.eof else b""
            self.buf, self.pos = b"".join(out), 0
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return n


def open_text(path) -> Iterator[str]:
    """Lines of a .pgn or .pgn.zst file. A corrupt or cut-short zstd stream ends the iteration with
    PGNStreamError (after the lines decoded before the damage)."""
    path = Path(path)
    if not path.is_file():
        from ..errors import DataError

        raise DataError(f"PGN file {path} {'is a directory' if path.is_dir() else 'not found'}: "
                        "expected a .pgn or .pgn.zst file")
    with open(path, "rb") as raw:
        frames = _ZstdFrames(raw) if path.suffix == ".zst" else None
        text = io.TextIOWrapper(io.BufferedReader(frames) if frames else raw, encoding="utf-8", errors="replace")
        it = iter(text)
        while True:
            try:
                line = next(it)
            except StopIteration:
                break
            except zstandard.ZstdError as e:
                raise PGNStreamError(f"{path}: compressed stream is corrupt after {raw.tell():,} bytes ({e})") from None
            yield line
        if frames is not None and frames.truncated:
            raise PGNStreamError(f"{path}: compressed stream ends inside a zstd frame at byte {raw.tell():,} "
                                 "(the file is cut short, e.g. an unfinished download); the game cut off there is dropped")


class PGNStreamError(IOError):
    pass


def parse_elo(value: Optional[str]) -> Optional[int]:
    """The rating in an Elo header, or None when it is not an ASCII number in ELO_RANGE."""
    v = (value or "").strip()
    if not _ELO.fullmatch(v):
        return None
    elo = int(v)
    return elo if ELO_RANGE[0] <= elo <= ELO_RANGE[1] else None


def _elo_reason(h: dict[str, str], require: bool) -> Optional[str]:
    for key in ("WhiteElo", "BlackElo"):
        raw = h.get(key, "").strip()
        if raw in _MISSING_ELO:
            if require:
                return "missing Elo"
        elif parse_elo(raw) is None:  # present but garbage: never a player's rating, whatever `require`
            return f"invalid Elo (not a number in {ELO_RANGE[0]}..{ELO_RANGE[1]})"
    return None


def header_reason(h: dict[str, str], filt: GameFilter) -> Optional[str]:
    """Why a game is filtered out by its headers, or None to keep it."""
    if "__bad__" in h:
        return "broken header"
    variant = h.get("Variant", "Standard").strip().casefold()
    if variant not in ("standard", "chess") and not (variant == "from position" and filt.keep_from_position):
        return "non-standard variant"
    event = h.get("Event", "")
    if filt.rated_only and "Rated" not in event:
        return "not rated"
    if filt.speeds and not any(s in event for s in filt.speeds):
        return "other speed"
    if filt.skip_bots and "bot" in (h.get("WhiteTitle", "").strip().casefold(), h.get("BlackTitle", "").strip().casefold()):
        return "bot"
    reason = _elo_reason(h, filt.require_elos)
    if reason:
        return reason
    if filt.require_result and h.get("Result") not in RESULTS:
        return "unknown result"
    return None


def elo_pair(h: dict[str, str]) -> tuple[int, int]:
    w, b = (elo_to_bucket(parse_elo(h.get(k)) or 0) for k in ("WhiteElo", "BlackElo"))
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
