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
import shutil
from dataclasses import dataclass
from pathlib import Path

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


def seed_transition_points(correct: np.ndarray) -> np.ndarray:
    """The seed's transition points [N] (values -1, 0..10) from correct [N, 11] bool."""
    correct = np.asarray(correct, dtype=bool)
    tp, _ = transition_points(correct)
    return np.where(tp < NEVER, tp, np.where(correct.any(1), SEED_DROPPED, SEED_NEVER)).astype(np.int64)


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
    from ..model.skill import as_skill_model

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
        else:  # an intervention's hooks differ per bucket (and may sit in the trunk)
            all_logits = (_hooked_logits(model, b, hooks_for(idx, k), k, eo) for k, eo in pairs)
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


@dataclass
class EngineOracle:
    """Best moves and move losses from a UCI engine at a fixed depth (or time) per position.

    Every search starts from a cleared engine (a new game: Stockfish empties its hash table), so an
    answer depends on the position alone. With one engine kept warm across positions, depth-8 best
    moves depended on what had been searched before: a third of them changed with the order of the
    positions, and every model's run got its own oracle."""

    path: str
    depth: int | None = 10
    seconds: float | None = None
    threads: int = 1

    def __enter__(self):
        self.engine = chess.engine.SimpleEngine.popen_uci(self.path)
        self.engine.configure({"Threads": self.threads})
        return self

    def __exit__(self, *exc):
        self.engine.quit()

    @property
    def limit(self) -> chess.engine.Limit:
        return chess.engine.Limit(depth=self.depth, time=self.seconds)

    def _search(self, board: chess.Board) -> dict:
        return self.engine.analyse(board, self.limit, game=object())  # a new game key sends ucinewgame

    def analyse(self, fen: str, moves: list[str]) -> tuple[str, dict[str, int]]:
        """(best move, {move: centipawns it loses against the best}) for the given candidate moves."""
        board = chess.Board(fen)
        info = self._search(board)
        best = info["pv"][0].uci()
        best_cp = info["score"].pov(board.turn).score(mate_score=10000)
        losses = {best: 0}
        for m in dict.fromkeys(moves):
            if m in losses:
                continue
            after = board.copy(stack=False)
            after.push_uci(m)
            if after.is_checkmate():  # a finished game cannot be searched: score it directly
                cp = 10000
            elif after.is_game_over():
                cp = 0
            else:
                cp = -self._search(after)["score"].pov(after.turn).score(mate_score=10000)
            losses[m] = max(0, best_cp - cp)
        return best, losses


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


def build_transitional(
    model,
    store,
    indices,
    *,
    oracle: str = "engine",
    engine: EngineOracle | None = None,
    accepted: list[list[str]] | None = None,
    blunder_cp: int = 150,
    oppo_bucket: int | None = None,
    batch_size: int = 512,
    progress=None,
) -> list[dict]:
    """One row per position: per-bucket predictions, correct move(s), transition point, blunder flag,
    and the active threat concepts.

    oracle: 'engine' (the engine's best move; also gives the blunder flag), 'accepted' (any move of
    `accepted[i]`, e.g. the seed study's acceptable moves) or 'model' (the model's top-bucket move).
    """
    from ..concepts import threat_concepts

    indices = np.asarray(indices)
    preds, probs = predictions_by_bucket(model, store, indices, oppo_bucket, batch_size)
    fens = store.fens(indices)
    threats = threat_concepts(fens)
    game_ids = np.asarray(store.column("game_id")[indices])
    split_of = {}
    for name in ("train", "val", "test"):
        for i in store.split_indices(name):
            split_of[int(i)] = name
    rows = []
    for i, fen in enumerate(fens):
        row_preds = preds[i]
        cp_low = None
        if oracle == "engine":
            if engine is None:
                raise MaiaAdaptError("oracle 'engine' needs a running EngineOracle")
            best, losses = engine.analyse(fen, row_preds)
            ok = [best]
            cp_low = losses[row_preds[0]]
        elif oracle == "accepted":
            ok = list(accepted[i])
        elif oracle == "model":
            ok = [row_preds[-1]]
        else:
            raise MaiaAdaptError(f"transitional.oracle '{oracle}': expected engine, accepted or model")
        rows.append({"fen": fen, "correct": ok, "preds": row_preds, "probs": probs[i], "cp_loss_low": cp_low,
                     "game_id": int(game_ids[i]), "split": split_of.get(int(indices[i]), "none"),
                     "threats": [n for n, v in zip(threats.names, threats.labels[i].tolist()) if v]})
        if progress:
            progress(1)
    correct = correct_by_bucket(preds, rows)
    tp, mono = transition_points(correct)
    for r, t, m, c in zip(rows, tp, mono, correct):
        r.update({"transition_point": int(t), "monotone": bool(m), "transitional": bool(0 < t < NEVER),
                  "blunder": r["cp_loss_low"] is not None and r["cp_loss_low"] >= blunder_cp,
                  "accuracy_by_bucket": c})
    return rows


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


def flat_rows(rows: list[dict]) -> list[dict]:
    """CSV-ready rows: lists joined by spaces, one column per bucket."""
    out = []
    for r in rows:
        flat = {"fen": r["fen"], "split": r["split"], "game_id": r["game_id"], "correct_moves": " ".join(r["correct"]),
                "transition_point": r["transition_point"], "transitional": int(r["transitional"]),
                "monotone": int(r["monotone"]), "blunder": int(r["blunder"]),
                "cp_loss_low": "" if r["cp_loss_low"] is None else r["cp_loss_low"], "threats": " ".join(r["threats"])}
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
            chess.Board(r["fen"])
        except (KeyError, ValueError) as e:
            raise DataError(f"{path}, line {i}: bad row ({type(e).__name__}: {e})") from None
    return rows
