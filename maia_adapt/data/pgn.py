"""Streaming lichess PGN reader with the study's filters, fast enough to feed preprocessing.

`.pgn` and `.pgn.zst` are read as streams (never decompressed to disk) and split into game texts.
Each game is parsed by a small tokenizer that reads the PGN standard's import format (comments of
both kinds, escape lines, NAGs, recursive variations): the SAN of each move is resolved against the
legal moves that the encoder generates anyway for the legal-move mask, so every position costs one
legal-move generation instead of python-chess's tree building plus SAN parsing. A game that fails to
parse (bad SAN, illegal move, broken header, truncated) is skipped and counted by reason.
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

# a tag pair, as python-chess names tags; a `;` comment may follow it
_HEADER = re.compile(r'^\[([A-Za-z0-9_][\w+#=:-]*)\s+"(.*)"\]\s*(?:;.*)?$')
# the movetext of the PGN standard's import format. A NAG may be written `$n`, as a suffix (`exd5!?`) or
# apart (`exd5 !?`); a move number may have no period; the long-algebraic `e2-e4` is what python-chess
# also accepts. `;` comments and `%` lines never get here (split_games removes them, line by line).
_TOKEN = re.compile(
    r"\{(?P<comment>[^}]*)\}"
    # first, being the cheapest to rule out; never the start of a result (1-0, 1/2-1/2)
    r"|(?P<num>[1-9]\d*\.*(?![-/]))"
    r"|(?P<san>(?:[NBRQK]?[a-h]?[1-8]?[-x]?[a-h][1-8](?:=?[NBRQnbrq])?|O-O-O|O-O|0-0-0|0-0)[+#]?[!?]*)"
    r"|(?P<result>1-0|0-1|1/2-1/2|\*)"
    r"|(?P<nag>\$\d+|[!?]{1,2})"
    r"|(?P<var>[()])"
    r"|(?P<null>--|Z0|0000|@@@@)"
    r"|(?P<other>\S+)"
)
_SAN = re.compile(r"^([NBRQK])?([a-h])?([1-8])?[-x]?([a-h][1-8])(?:=?([NBRQnbrq]))?")
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
    """Split a PGN line stream into games: a game ends at a blank line after its movetext, or where a
    tag line follows its movetext.

    What the PGN standard's import format allows besides tag pairs and movetext is taken out here,
    since it is line-based: a byte-order mark (at the start of each file of a concatenation too),
    `%` escape lines, `;` comments to the end of the line, and `{...}` comments over several lines,
    whose lines may start with `[` without being tags. A `{` that is never closed ends at the next
    line that is a whole tag pair, so that a stray brace costs its own game, not the rest of the file.

    When the stream breaks (PGNStreamError: a corrupt or cut-short file), the game being read is
    yielded only if it is whole (its movetext ended with a result marker and a newline), then the
    error propagates: a game cut off mid-movetext is never taken for a complete one.
    """
    headers: dict[str, str] = {}
    movetext: list[str] = []
    index = 0
    bad_header = False
    in_brace = False  # inside a {comment} that an earlier line opened
    line = "\n"
    try:
        for line in lines:
            if "\ufeff" in line:
                line = line.replace("\ufeff", "")
            if in_brace:
                if not (line.startswith("[") and _HEADER.match(line)):
                    text, in_brace = _strip_line_comment(line.strip(), True)
                    movetext.append(text)
                    continue
                in_brace = False  # never closed: the game is reported by iter_moves, the tag starts the next
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
            elif line.startswith("%"):
                continue
            else:
                text = line.strip()
                if not text:
                    if movetext:
                        yield _finish(headers, movetext, bad_header, index, source)
                        index += 1
                        headers, movetext, bad_header = {}, [], False
                    continue
                if ";" in text:
                    text, in_brace = _strip_line_comment(text, False)
                    if not text:
                        continue
                elif "{" in text:  # _strip_line_comment's test, inline: lichess has braces on every movetext line
                    in_brace = text.rfind("{") > text.rfind("}")
                movetext.append(text)
    except PGNStreamError:
        if movetext and not bad_header and not in_brace and line.endswith("\n") \
                and movetext[-1].rsplit(None, 1)[-1] in _TERMINATION:
            yield _finish(headers, movetext, bad_header, index, source)
        raise
    if movetext or headers or bad_header:
        yield _finish(headers, movetext, bad_header, index, source)


def _strip_line_comment(text: str, in_brace: bool) -> tuple[str, bool]:
    """A movetext line without its `;` comment, and whether it ends inside a `{` comment; `in_brace`:
    it starts inside one. A `;` inside braces and a `{` after a `;` are comment text."""
    if ";" not in text:
        # braces do not nest, so a line ends inside a comment when a `{` follows its last `}`
        if in_brace and "}" not in text:
            return text, True
        return text, text.rfind("{") > text.rfind("}")
    i = 0
    while True:
        if in_brace:
            close = text.find("}", i)
            if close < 0:
                return text, True
            i, in_brace = close + 1, False
        else:
            open_, semi = text.find("{", i), text.find(";", i)
            if semi >= 0 and (open_ < 0 or semi < open_):
                return text[:semi].rstrip(), False
            if open_ < 0:
                return text, False
            i, in_brace = open_ + 1, True


def _finish(headers, movetext, bad_header, index, source) -> Game:
    if bad_header:
        return Game({"__bad__": "1"}, "", index, source)
    return Game(headers, " ".join(movetext), index, source)


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE = 0x184D2A50  # skippable frames: magic 0x184D2A50..5F, then their 4-byte length


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every zstd frame in a file, noting whether the last one was cut short.

    The decoder is given one zstd block at a time, located from the frame and block headers (RFC 8878):
    the decoder returns nothing of a call that fails, so a damaged block then costs only its own text,
    and every game decoded before it is read. zstandard's stream_reader would also end silently at a
    frame cut off mid-way (an unfinished download); `truncated` says whether the file ended inside one,
    and `damaged_at` where the block that failed starts.
    """

    def __init__(self, raw, chunk: int = 1 << 16):
        self.raw, self.chunk = raw, chunk
        self.dctx = zstandard.ZstdDecompressor()
        self.frame = None
        self.pieces = self._pieces()
        self.buf, self.pos = b"", 0
        self.rbuf, self.rpos, self.offset = b"", 0, 0  # raw bytes read ahead; file offset of what comes next
        self.truncated = False
        self.damaged_at = None

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:
        """The next n raw bytes (fewer at the end of the file)."""
        parts = []
        while n > 0:
            if self.rpos >= len(self.rbuf):
                self.rbuf, self.rpos = self.raw.read(max(self.chunk, n)), 0
                if not self.rbuf:
                    break
            part = self.rbuf[self.rpos : self.rpos + n]
            self.rpos += len(part)
            n -= len(part)
            parts.append(part)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def _pieces(self):
        """(file offset, bytes) of each frame header and each block, the decoder's units; skippable
        frames are dropped. What cannot be a frame is passed on whole, for the decoder to reject."""
        while True:
            at = self.offset
            magic = self._read(4)
            if len(magic) < 4:
                if magic:
                    yield at, magic
                return
            kind = int.from_bytes(magic, "little")
            if kind & 0xFFFFFFF0 == _SKIPPABLE:
                size = int.from_bytes(self._read(4), "little")
                while size > 0 and (skipped := len(self._read(min(size, 1 << 20)))):
                    size -= skipped
                continue
            if kind != _ZSTD_MAGIC:
                yield at, magic + self._read(1 << 16)
                return
            descriptor = self._read(1)
            if not descriptor:
                yield at, magic
                return
            d = descriptor[0]
            single = (d >> 5) & 1
            header = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + ((1 if single else 0), 2, 4, 8)[d >> 6]
            checksum = 4 if d & 4 else 0
            yield at, magic + descriptor + self._read(header)
            last = False
            while not last:
                at = self.offset
                head = self._read(3)
                if len(head) < 3:
                    if head:
                        yield at, head
                    return
                h = int.from_bytes(head, "little")
                last, size = bool(h & 1), (1 if (h >> 1) & 3 == 1 else h >> 3)  # an RLE block holds one byte
                yield at, head + self._read(size + (checksum if last else 0))

    def readinto(self, b) -> int:
        while self.pos >= len(self.buf):
            piece = next(self.pieces, None)
            if piece is None:
                # no frame at all (an empty file) is cut short too: a download that stopped at byte 0
                self.truncated = self.frame is None or not self.frame.eof
                return 0
            at, data = piece
            if self.frame is None or self.frame.eof:
                self.frame = self.dctx.decompressobj()
            try:
                self.buf, self.pos = self.frame.decompress(data), 0
            except zstandard.ZstdError:
                self.damaged_at = at
                raise
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
                raise PGNStreamError(f"{path}: compressed stream is corrupt at byte {frames.damaged_at:,} ({e}); "
                                     "the games before it are kept") from None
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
    """(start board, [(SAN, the comments after the move)]) of the game's mainline; the caller resolves
    and pushes the moves. Variations, NAGs and move numbers are skipped; a null move, an unclosed
    comment or a token that is not PGN makes the game unreadable (PGNError)."""
    fen = game.headers.get("FEN")
    try:
        board = chess.Board(fen) if fen else chess.Board()
    except ValueError:
        raise PGNError("bad FEN header", fen) from None
    out: list[tuple[str, str]] = []
    san = None  # the last mainline move, waiting for the comments after it
    note = ""
    depth = 0  # of variations: their moves, comments and results are skipped
    for t in _TOKEN.finditer(game.moves_text):
        kind = t.lastgroup
        if kind == "comment":
            if not depth and san is not None:
                note = f"{note} {t.group(kind)}" if note else t.group(kind)
        elif kind == "san":
            if not depth:
                if san is not None:
                    out.append((san, note))
                san, note = t.group(kind), ""
        elif kind == "num" or kind == "nag":
            continue
        elif kind == "var":
            depth = depth + 1 if t.group() == "(" else max(0, depth - 1)
        elif depth:
            continue
        elif kind == "result":
            break
        elif kind == "null":  # python-chess reads it, but no position follows from a move not made
            raise PGNError("null move", t.group())
        else:
            raise PGNError("unterminated comment" if t.group().startswith("{") else "bad token", t.group()[:20])
    if san is not None:
        out.append((san, note))
    return board, out
