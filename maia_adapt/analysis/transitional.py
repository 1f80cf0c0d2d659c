"""Transitional positions: where the model's move is wrong at low skill and right from some Elo bucket up.

For each position the model predicts a move at each of the 11 Elo buckets (self = opponent bucket
unless an opponent bucket is fixed). Against a "correct" move (an engine's best move, a set of
acceptable moves, or the model's own top-bucket move) each bucket is right or wrong; the
*transition point* is the first bucket of the final run of right answers: 0 = right everywhere,
NEVER (11) = wrong at the top bucket. A position whose right answers are not one unbroken run up to
the top is *non-monotone* (its transition point still marks where the final run starts).
"""
from __future__ import annotations

import json
import queue
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import chess
import chess.engine
import numpy as np
import torch

from ..encoding import NUM_BUCKETS, decode_move
from ..errors import DataError, MaiaAdaptError
from ..model.inference import masked_probs

NEVER = NUM_BUCKETS  # transition point of a position the model never gets right


def transition_points(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(transition point [N], monotone [N]) from correct [N, 11] bool."""
    correct = np.asarray(correct, dtype=bool)
    n, b = correct.shape
    # length of the run of right answers ending at the top bucket
    run = np.cumprod(correct[:, ::-1], axis=1).sum(1)
    tp = b - run
    monotone = correct.sum(1) == run  # no right answer below the final run
    return tp.astype(np.int64), monotone


# The seed's convention (N test/externalization/maia2_ft.py:133-151 `find_transition_point`, the same in R
# ft_per_concept_head_only.py): 0 = right everywhere, 10 = wrong everywhere, else the first bucket of
# the final run of right answers if that run reaches bucket 10, else -1 (the row is dropped). A row
# right only at bucket 10 also reads 10, so "never right" and "right from the top bucket" are one value.
SEED_NEVER = 10
SEED_DROPPED = -1


def seed_transition_points(correct: np.ndarray, levels: int = NUM_BUCKETS) -> np.ndarray:
    """The seed's transition points [N] (values -1, 0..10) from correct [N, 11] bool, over its first
    `levels` buckets: 11 for the fine-tune, 10 (buckets 0..9) for its NeurIPS interventions
    (run_sae_intervention.py:368-413), where a row wrong at bucket 9 alone is dropped too."""
    correct = np.asarray(correct, dtype=bool)[:, :levels]
    tp, _ = transition_points(correct)
    return np.where(tp < levels, tp, np.where(correct.any(1), SEED_DROPPED, SEED_NEVER)).astype(np.int64)


def seed_tp_from_ours(tp, monotone) -> np.ndarray:
    """Our transition points (0..11, with the monotone flag a transitional.csv carries) in the seed's
    convention: 11 (wrong at the top bucket) is 10 when no bucket is right (our monotone rows at 11) and
    -1 when some lower bucket is; 0..10 are the same number (10: right at the top bucket only)."""
    tp, monotone = np.asarray(tp, dtype=np.int64), np.asarray(monotone, dtype=bool)
    return np.where(tp < NEVER, tp, np.where(monotone, SEED_NEVER, SEED_DROPPED)).astype(np.int64)


def _hooked_logits(model, inputs, hooks, elo_self, elo_oppo):
    with model.hooks(hooks):
        return model.policy_logits(inputs, elo_self, elo_oppo)


@torch.no_grad()
def predictions_by_bucket(model, store, indices, oppo_bucket: int | None = None, batch_size: int = 512, hooks_for=None):
    """Top-1 legal move (UCI, real colours) and its probability at every Elo bucket: ([N][11], [N, 11]).

    `model` is a SkillModel (or a bare Maia2). Buckets that behave identically (`conditions()`: the
    Maia-1 family maps buckets 0,1 to maia-1100 and 9,10 to maia-1900) are computed once and copied.
    The inputs are the model's own (`model.inputs`): for Maia-1 that replays each position's game
    history where the store has it; a FEN-only store (the seed set) has none, so Maia-1 sees lc0's
    bare-FEN input (the position repeated in every history slot).
    hooks_for(batch indices, bucket) gives the hooks to run each batch under at a conditioning bucket
    (an intervention, which may differ per network of the Maia-1 family), or None."""
    from ..model.skill import Maia2Skill, as_skill_model

    model = as_skill_model(model)
    moves: list[list[str]] = []
    probs = np.zeros((len(indices), NUM_BUCKETS), dtype=np.float32)
    for s in range(0, len(indices), batch_size):
        idx = np.asarray(indices[s : s + batch_size])
        b = model.inputs(store, idx)
        n = len(idx)
        top = np.zeros((n, NUM_BUCKETS), dtype=np.int64)
        conditions = model.conditions()
        pairs = [(k, k if oppo_bucket is None else int(oppo_bucket)) for k, _ in conditions]
        if hooks_for is None:  # one Elo-blind trunk pass for every bucket
            all_logits = model.policy_logits_by_condition(b, pairs)
        else:  # an intervention's hooks differ per bucket
            hooks = [hooks_for(idx, k) for k, _ in pairs]
            if isinstance(model, Maia2Skill) and all(name.startswith("blocks.") for h in hooks for name, _ in h):
                # hooks inside the transformer only: the Elo-blind trunk still runs once for every bucket
                all_logits = model.policy_logits_by_condition(b, pairs, hooks)
            else:  # hooks in the trunk, or the Maia-1 family's networks: a whole forward per bucket
                all_logits = (_hooked_logits(model, b, h, k, eo) for h, (k, eo) in zip(hooks, pairs))
        for (k, same), logits in zip(conditions, all_logits):
            p = masked_probs(logits.cpu(), b["legal"])
            pk, mk = p.max(-1)
            top[:, same], probs[s : s + n, same] = mk.numpy()[:, None], pk.numpy()[:, None]
        turns = [f.split()[1] == "w" for f in store.fens(idx)]
        moves += [[decode_move(int(m), w) for m in row] for row, w in zip(top, turns)]
    return moves, probs


def correct_by_bucket(preds: list[list[str]], rows: list[dict]) -> np.ndarray:
    """[N, 11] bool: whether each bucket's move is among the row's correct moves."""
    return np.array([[p in r["correct"] for p in row] for row, r in zip(preds, rows)], dtype=bool).reshape(len(rows), NUM_BUCKETS)


def find_engine(path: str | None = None) -> str | None:
    """The Stockfish binary: `path`, else `stockfish` on PATH, else Debian's /usr/games/stockfish."""
    if path:
        if not Path(path).is_file():
            raise MaiaAdaptError(f"engine {path} not found: expected a UCI engine binary (e.g. apt-get install stockfish)")
        return path
    return shutil.which("stockfish") or (str(Path("/usr/games/stockfish")) if Path("/usr/games/stockfish").is_file() else None)


MATE = 10000  # centipawns a mate counts as (minus its distance in plies), as the engine's mate_score


class EngineCache:
    """Engine answers kept on disk by engine, search limit and position: one JSON line per search,
    appended as it is made (O_APPEND, one short write per line), so two runs can share the file and a
    killed run keeps what it searched. The answers are worth keeping because every search starts from
    a cleared engine: an answer depends on the position and the limit alone, and the transitional
    positions of several models, or of one model under several protocols, are the same FENs."""

    def __init__(self, path: Path | None, shipped: Iterable[str | Path] = ()):
        self.path = Path(path) if path else None
        self.answers: dict[str, list] = {}
        for source in [*shipped, *([self.path] if self.path else [])]:
            for line in _read_text(Path(source)).splitlines():
                try:
                    key, value = json.loads(line)
                except (ValueError, TypeError):  # a line cut short by a killed run: searched again
                    continue
                self.answers[key] = value
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def engines(self) -> set[str]:
        """The engine names the answers come from (the first field of a key)."""
        return {k.split("|", 1)[0] for k in self.answers}

    def get(self, key: str):
        return self.answers.get(key)

    def put(self, key: str, value) -> None:
        with self._lock:
            self.answers[key] = value
            if self.path:
                with open(self.path, "a") as f:
                    f.write(json.dumps([key, value]) + "\n")


def _read_text(path: Path) -> str:
    """An answers file, plain or zstd-compressed (the shipped ones); a missing cache reads as empty."""
    if path.suffix == ".zst":
        if not path.is_file():
            raise DataError(f"{path} not found: expected a file of engine answers (transitional.engine_answers)")
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read().decode()
    return path.read_text() if path.is_file() else ""


class NoEngineAnswer(MaiaAdaptError):
    """A search an answers-only oracle has no answer for (no engine is installed)."""


@dataclass
class EngineOracle:
    """Best moves, multi-PV lines and move scores from a UCI engine at a fixed depth (or time, or node
    budget) per position.

    Every search starts from a cleared engine (a new game: Stockfish empties its hash table), so an
    answer depends on the position alone. With one engine kept warm across positions, depth-8 best
    moves depended on what had been searched before: a third of them changed with the order of the
    positions, and every model's run got its own oracle. `workers` engines (one thread each) search
    positions side by side; `cache` keeps every answer on disk (EngineCache)."""

    path: str | None  # None: answers only, from `shipped` (no engine installed)
    depth: int | None = 10
    seconds: float | None = None
    nodes: int | None = None
    threads: int = 1
    workers: int = 1
    cache: Path | None = None
    # answer files read as part of the cache (never written): the shipped answers of the embedded
    # games' study positions, so that the study runs where no Stockfish is installed
    shipped: tuple = ()

    def __enter__(self):
        self._idle: queue.Queue = queue.Queue()
        self._engines = []
        for _ in range(max(1, self.workers) if self.path else 0):
            engine = chess.engine.SimpleEngine.popen_uci(self.path)
            engine.configure({"Threads": self.threads})
            self._engines.append(engine)
            self._idle.put(engine)
        self._cache = EngineCache(self.cache, self.shipped) if (self.cache or self.shipped) else None
        if self._engines:
            self.name = self._engines[0].id.get("name", Path(self.path).name)
        else:
            names = sorted(self._cache.engines()) if self._cache else []
            if len(names) != 1:
                raise MaiaAdaptError(f"no engine installed, and the engine answers {list(self.shipped)} come from "
                                     f"{len(names)} engines: expected one (install stockfish, or set transitional.engine_path)")
            self.name = names[0]
        return self

    def __exit__(self, *exc):
        for engine in self._engines:
            engine.quit()

    @property
    def limit(self) -> chess.engine.Limit:
        return chess.engine.Limit(depth=self.depth, time=self.seconds, nodes=self.nodes)

    def _key(self, fen: str, multipv: int) -> str:
        return f"{self.name}|depth={self.depth}|time={self.seconds}|nodes={self.nodes}|multipv={multipv}|{fen}"

    def lines(self, board: chess.Board, multipv: int = 1) -> list[tuple[str, int]]:
        """[(first move of the PV, its score in centipawns for the side to move)], best first."""
        key = self._key(board.fen(), multipv)
        hit = self._cache.get(key) if self._cache else None
        if hit is not None:
            return [(m, int(cp)) for m, cp in hit]
        if not self._engines:
            raise NoEngineAnswer(f"no engine answer for {board.fen()}")
        engine = self._idle.get()
        try:  # a new game key sends ucinewgame
            infos = engine.analyse(board, self.limit, multipv=multipv, game=object())
        finally:
            self._idle.put(engine)
        out = [(i["pv"][0].uci(), i["score"].pov(board.turn).score(mate_score=MATE)) for i in infos if i.get("pv")]
        if self._cache:
            self._cache.put(key, out)
        return out

    def score_after(self, board: chess.Board, move: str) -> int:
        """The score of playing `move`, in centipawns for the side that plays it (searched after it)."""
        after = board.copy(stack=False)
        after.push_uci(move)
        if after.is_checkmate():  # a finished game cannot be searched: score it directly
            return MATE
        if after.is_game_over():
            return 0
        return -self.lines(after)[0][1]

    def analyse(self, fen: str, moves: list[str]) -> tuple[str, dict[str, int]]:
        """(best move, {move: centipawns it loses against the best}) for the given candidate moves."""
        board = chess.Board(fen)
        best, best_cp = self.lines(board)[0]
        losses = {best: 0}
        for m in dict.fromkeys(moves):
            if m not in losses:
                losses[m] = max(0, best_cp - self.score_after(board, m))
        return best, losses

    def map(self, fn, items, progress=None) -> list:
        """fn over items, `workers` at a time (each search takes an idle engine), results in order."""
        if self.workers <= 1:
            out = []
            for x in items:
                out.append(fn(x))
                if progress:
                    progress(1)
            return out
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(fn, x) for x in items]
            for f in futures:
                f.add_done_callback(lambda _: progress and progress(1))
            return [f.result() for f in futures]


def load_seed_positions(path) -> dict:
    """The seed study's transitional positions: fens, transition points, best move, all best moves."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: expected the seed study's transitional positions (JSON)")
    try:
        raw = json.loads(path.read_text())
        out = {"fens": raw["filtered_special_fens"], "transition_points": raw["filtered_transition_points"],
               "best_moves": raw["filtered_best_transitional_moves"], "all_best_moves": raw["filtered_all_best_transitional_moves"]}
    except (json.JSONDecodeError, KeyError) as e:
        raise DataError(f"{path}: not the seed transitional-position JSON ({type(e).__name__}: {e})") from None
    n = len(out["fens"])
    if any(len(v) != n for v in out.values()):
        raise DataError(f"{path}: its lists have different lengths ({', '.join(f'{k} {len(v)}' for k, v in out.items())})")
    fixed = 0
    for i, fen in enumerate(out["fens"]):
        try:
            board = chess.Board(fen)
        except ValueError:
            raise DataError(f"{path}: position {i} has a bad FEN '{fen}'") from None
        # some seed FENs keep castling rights whose king or rook has moved; the position is otherwise
        # fine, so drop the impossible rights rather than the position
        if board.status() & chess.STATUS_BAD_CASTLING_RIGHTS:
            board.castling_rights = board.clean_castling_rights()
            out["fens"][i] = board.fen()
            fixed += 1
        if not board.is_valid():
            raise DataError(f"{path}: position {i} is not a legal chess position: '{fen}'")
        # two seed positions write castling as king-takes-rook (e1h1); the models, python-chess and
        # our move vocabulary say e1g1, so a castling answer would never count as correct
        out["best_moves"][i] = _standard_uci(board, out["best_moves"][i], path, i)
        out["all_best_moves"][i] = [_standard_uci(board, m, path, i) for m in out["all_best_moves"][i]]
    out["castling_rights_fixed"] = fixed
    return out


def _standard_uci(board: chess.Board, uci: str, path, i: int) -> str:
    try:
        return board.parse_uci(uci).uci()
    except ValueError:
        raise DataError(f"{path}: position {i}: move '{uci}' is not legal in '{board.fen()}'") from None


ACCEPT = ("best", "multipv")  # transitional.accept
REQUIRE = ("none", "monotone", "monotone_blunder")  # transitional.require
BLUNDER_RULES = ("loss", "seed")  # transitional.blunder_rule


def engine_evidence(engine: EngineOracle, fen: str, low_move: str, multipv: int = 1) -> dict:
    """What the engine says of one position: its multi-PV lines (first move, centipawns for the side
    to move, best first) and the score of the bottom bucket's move, searched after that move (also
    when it is the best move: the seed's blunder rule compares two searches)."""
    board = chess.Board(fen)
    lines = engine.lines(board, multipv)
    return {"pv": lines, "cp_after_low": engine.score_after(board, low_move)}


def accepted_moves(pv: list[tuple[str, int]], accept: str = "best", accept_cp: int = 30) -> list[str]:
    """The correct moves of a position from its engine lines, the best first. best: the engine's best
    move only (ours); multipv: every line's first move scoring less than accept_cp below the best (the
    seed's, test/intervention.py:38-39 of its history: `abs(cp - best_cp) < 30` over the lichess
    evaluation database's lines)."""
    if accept == "best":
        return [pv[0][0]]
    if accept == "multipv":
        best_cp = pv[0][1]
        return [m for m, cp in pv if best_cp - cp < accept_cp]
    raise MaiaAdaptError(f"transitional.accept '{accept}': expected one of {', '.join(ACCEPT)}")


def is_blunder(best_cp: int, cp_after: int, best_move: str, low_move: str, rule: str = "loss", threshold: int = 150) -> bool:
    """Does the bottom bucket's move blunder? loss (ours): it loses at least `threshold` centipawns
    against the best move. seed: the seed's test, |eval before - eval after| > threshold with both
    evals `.relative`, i.e. each for the side to move of its own board, so the second has the other
    side's sign (test/intervention.py:171-190 of its history): the value is |best + after| for the
    mover, which flags most moves of a position worth more than about 75 cp either way, and a mate
    score on either side is never a blunder."""
    if rule == "loss":
        return (0 if low_move == best_move else max(0, best_cp - cp_after)) >= threshold
    if rule == "seed":
        if max(abs(best_cp), abs(cp_after)) > MATE - 1000:
            return False
        return abs(best_cp + cp_after) > threshold
    raise MaiaAdaptError(f"transitional.blunder_rule '{rule}': expected one of {', '.join(BLUNDER_RULES)}")


def build_transitional(
    model,
    store,
    indices,
    *,
    oracle: str = "engine",
    engine: EngineOracle | None = None,
    accepted: list[list[str]] | None = None,
    accept: str = "best",
    accept_cp: int = 30,
    multipv: int = 1,
    blunder_cp: int = 150,
    blunder_rule: str = "loss",
    oppo_bucket: int | None = None,
    batch_size: int = 512,
    progress=None,
) -> list[dict]:
    """One row per position: per-bucket predictions, correct move(s), transition point, blunder flag,
    and the active threat concepts.

    oracle: 'engine' (the engine's lines give the correct moves by `accept`, and the blunder flag by
    `blunder_rule`), 'accepted' (any move of `accepted[i]`, e.g. the seed study's acceptable moves) or
    'model' (the model's top-bucket move).
    """
    from ..concepts import threat_concepts

    indices = np.asarray(indices)
    preds, probs = predictions_by_bucket(model, store, indices, oppo_bucket, batch_size)
    fens = store.fens(indices)
    histories = store.history(indices)
    threats = threat_concepts(fens)
    game_ids = np.asarray(store.column("game_id")[indices])
    split_of = {}
    for name in ("train", "val", "test"):
        for i in store.split_indices(name):
            split_of[int(i)] = name
    if oracle == "engine":
        if engine is None:
            raise MaiaAdaptError("oracle 'engine' needs a running EngineOracle")
        def evidence_of(i):
            try:
                return engine_evidence(engine, fens[i], preds[i][0], multipv)
            except NoEngineAnswer:  # answers only, and none for this search: the position is left out, counted
                return None

        evidence = engine.map(evidence_of, range(len(fens)), progress)
    elif oracle not in ("accepted", "model"):
        raise MaiaAdaptError(f"transitional.oracle '{oracle}': expected engine, accepted or model")
    rows = []
    for i, fen in enumerate(fens):
        row_preds = preds[i]
        row = {"fen": fen, "preds": row_preds, "probs": probs[i], "cp_loss_low": None, "game_id": int(game_ids[i]),
               "split": split_of.get(int(indices[i]), "none"), "history": history_text(*histories[i][:2]),
               "threats": [n for n, v in zip(threats.names, threats.labels[i].tolist()) if v]}
        if oracle == "engine":
            ev = evidence[i]
            if ev is None:
                continue
            (best, best_cp), low = ev["pv"][0], row_preds[0]
            row.update(correct=accepted_moves(ev["pv"], accept, accept_cp), engine_best=best, pv=ev["pv"],
                       cp_after_low=ev["cp_after_low"],
                       cp_loss_low=0 if low == best else max(0, best_cp - ev["cp_after_low"]),
                       blunder=is_blunder(best_cp, ev["cp_after_low"], best, low, blunder_rule, blunder_cp))
        else:
            row.update(correct=list(accepted[i]) if oracle == "accepted" else [row_preds[-1]], blunder=False)
            if progress:
                progress(1)
        rows.append(row)
    if oracle == "engine":
        preds = [p for p, ev in zip(preds, evidence) if ev is not None]
    correct = correct_by_bucket(preds, rows)
    tp, mono = transition_points(correct)
    for r, t, m, c in zip(rows, tp, mono, correct):
        r.update({"transition_point": int(t), "monotone": bool(m), "transitional": bool(0 < t < NEVER),
                  "accuracy_by_bucket": c})
    return rows


def required(rows: list[dict], require: str = "none") -> list[dict]:
    """The rows a dataset keeps. none: every position (ours). monotone: the seed's transitional rows
    (is_transitional, test/intervention.py:72-84 of its history): the top move wrong below one bucket
    and right from it up, so right at the top and wrong at the bottom. monotone_blunder: of those, the
    ones whose bottom-bucket move is a blunder (its blundered-transitional dataset). Both select
    positions on the model's own errors: any change to the weak buckets' moves then looks like a gain
    more easily (docs: the seed's protocol)."""
    if require == "none":
        return rows
    if require not in REQUIRE:
        raise MaiaAdaptError(f"transitional.require '{require}': expected one of {', '.join(REQUIRE)}")
    keep = [r for r in rows if r["transitional"] and r["monotone"]]
    return [r for r in keep if r["blunder"]] if require == "monotone_blunder" else keep


def skill_stats(correct: np.ndarray, games, n_boot: int = 1000, seed: int = 0) -> dict:
    """How a position set's correct-move accuracy depends on skill, with 95% intervals from a bootstrap
    over games (positions of one game are not independent; over positions if every row has one game).

    correct [N, 11] bool (does bucket k play a correct move). Returns accuracy per bucket, the skill
    gain (accuracy at bucket 10 minus bucket 0, paired), the shares of transitional, never-right and
    non-monotone positions and the mean transition point of the transitional ones, each with `_ci95`."""
    correct = np.asarray(correct, dtype=bool)
    n = len(correct)
    tp, mono = transition_points(correct)
    trans = (tp > 0) & (tp < NEVER)
    _, g = np.unique(np.asarray(games), return_inverse=True)
    if g.max(initial=0) == 0:
        g = np.arange(n)
    n_games = int(g.max(initial=-1)) + 1
    # per-game sums of everything a statistic needs; a bootstrap draw weights the games
    cols = np.column_stack([correct, np.ones(n), trans, trans * np.where(trans, tp, 0), tp == NEVER, ~mono]).astype(float)
    sums = np.zeros((n_games, cols.shape[1]))
    np.add.at(sums, g, cols)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_games, np.full(n_games, 1.0 / n_games), size=n_boot).astype(float) if n_games else np.zeros((n_boot, 0))
    boot = np.vstack([sums.sum(0, keepdims=True), w @ sums])  # row 0: the data itself

    def stat(b):
        k = NUM_BUCKETS
        npos = b[:, k]
        acc = b[:, :k] / npos[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return {**{f"accuracy_bucket_{i}": acc[:, i] for i in range(k)}, "skill_gain": acc[:, k - 1] - acc[:, 0],
                    "transitional_share": b[:, k + 1] / npos, "mean_transition_point_of_transitional": b[:, k + 2] / b[:, k + 1],
                    "never_share": b[:, k + 3] / npos, "non_monotone_share": b[:, k + 4] / npos}

    out = {}
    for name, v in stat(boot).items():
        out[name] = float(v[0])
        lo, hi = np.nanpercentile(v[1:], [2.5, 97.5]) if n_boot and np.isfinite(v[1:]).any() else (np.nan, np.nan)
        out[f"{name}_ci95"] = [float(lo), float(hi)]
    return out


def history_text(start_fen: str | None, moves: list[str]) -> str:
    """A position's game history as the body of a UCI `position` command ("startpos moves e2e4 ...",
    "fen <FEN> moves ..."); "" when no move led to it (a bare FEN, a game's first position), so the
    row's FEN is all there is."""
    if not moves:
        return ""
    head = "startpos" if start_fen is None else f"fen {chess.Board(start_fen).fen()}"  # all six fields
    return f"{head} moves {' '.join(moves)}"


def parse_history(text: str) -> tuple[str | None, list[str]] | None:
    """`history_text`'s inverse: (start FEN or None for the standard start, UCI moves), None for ""."""
    words = text.split()
    if not words:
        return None
    if words[0] == "startpos":
        start, rest = None, words[1:]
    elif words[0] == "fen" and len(words) >= 7:
        start, rest = " ".join(words[1:7]), words[7:]
    else:
        raise ValueError(f"history '{text[:60]}': expected 'startpos [moves ...]' or 'fen <FEN> [moves ...]'")
    if rest and rest[0] != "moves":
        raise ValueError(f"history '{text[:60]}': expected 'moves' after the start position")
    return start, rest[1:]


def flat_rows(rows: list[dict]) -> list[dict]:
    """CSV-ready rows: lists joined by spaces, one column per bucket."""
    out = []
    for r in rows:
        flat = {"fen": r["fen"], "split": r["split"], "game_id": r["game_id"], "history": r.get("history", ""),
                "correct_moves": " ".join(r["correct"]),
                "transition_point": r["transition_point"], "transitional": int(r["transitional"]),
                "monotone": int(r["monotone"]), "blunder": int(r["blunder"]),
                "cp_loss_low": "" if r["cp_loss_low"] is None else r["cp_loss_low"], "threats": " ".join(r["threats"])}
        if "pv" in r:  # the engine's evidence, so that another acceptance or blunder rule can be read off
            flat.update({"engine_best": r["engine_best"], "pv": " ".join(f"{m}:{cp}" for m, cp in r["pv"]),
                         "cp_after_low": r["cp_after_low"]})
        flat.update({f"pred_{k}": m for k, m in enumerate(r["preds"])})
        flat.update({f"prob_{k}": round(float(p), 4) for k, p in enumerate(r["probs"])})
        if "seed_transition_point" in r:
            flat["seed_transition_point"] = r["seed_transition_point"]
        out.append(flat)
    return out


def read_transitional(path) -> list[dict]:
    """Rows of a transitional.csv written by stage=transitional (a file or its run directory)."""
    import csv

    from ..layout import TRANSITIONAL_CSV, resolve

    try:
        path = resolve(path, TRANSITIONAL_CSV, what="the transitional.csv of a stage=transitional run")
    except MaiaAdaptError as e:
        raise DataError(str(e)) from None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows, start=2):
        try:
            r["transition_point"] = int(r["transition_point"])
            r["correct"] = r["correct_moves"].split()
            r["threats"] = r["threats"].split()
            r["preds"] = [r[f"pred_{k}"] for k in range(NUM_BUCKETS)] if "pred_0" in r else None
            # a dataset from before the history column: bare FENs (what Maia-1 and Maia-3 then read)
            r["history"] = parse_history(r.get("history") or "")
            if r.get("pv"):
                r["pv"] = [(m, int(cp)) for m, cp in (x.rsplit(":", 1) for x in r["pv"].split())]
            chess.Board(r["fen"])
        except (KeyError, ValueError) as e:
            raise DataError(f"{path}, line {i}: bad row ({type(e).__name__}: {e})") from None
    return rows


def seed_terms(rows: list[dict], blunder_cp: int = 150) -> dict:
    """A position set in the seed's terms (its history's intervention.ipynb printed these for the
    lichess evaluation database with the official Maia-2: all correct 31.5%, transitional 10.1% of
    1,000,000): the shares right at every bucket, never right, transitional (one wrong-to-right step,
    the seed's definition), non-monotone, and of the transitional ones the share whose bottom-bucket
    move is a blunder by each rule (rows with engine evidence only)."""
    n = len(rows)
    if not n:
        return {"positions": 0}
    tp = np.array([r["transition_point"] for r in rows])
    mono = np.array([r["monotone"] for r in rows])
    trans = (tp > 0) & (tp < NEVER) & mono
    out = {"positions": n, "share_all_correct": float((tp == 0).mean()), "share_never_correct": float((tp == NEVER).mean()),
           "share_transitional": float(trans.mean()), "share_non_monotone": float((~mono).mean()),
           "mean_correct_moves": float(np.mean([len(r["correct"]) for r in rows]))}
    with_pv = [r for r, t in zip(rows, trans) if t and r.get("pv")]
    for rule in BLUNDER_RULES:
        flags = [is_blunder(r["pv"][0][1], int(r["cp_after_low"]), r["pv"][0][0], r["preds"][0], rule, blunder_cp)
                 for r in with_pv]
        out[f"share_transitional_blunder_{rule}"] = float(np.sum(flags) / n) if with_pv else float("nan")
    return out
