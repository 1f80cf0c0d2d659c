"""FEN(s) + Elo -> legal-move probabilities and win probability, batched.

Matches the official `maia2.inference`: logits masked to legal moves then softmax; win probability
= value / 2 + 0.5 clamped to [0, 1], from White's point of view; moves in real (un-mirrored) UCI.
"""
from __future__ import annotations

from dataclasses import dataclass

import chess
import numpy as np
import torch

from ..encoding import NUM_BUCKETS, as_bucket, board_planes, decode_move, legal_mask, parse_fen
from ..errors import MaiaAdaptError


@dataclass
class Prediction:
    fen: str
    move_probs: dict[str, float]  # legal moves, most probable first
    win_prob: float  # White's winning chances in [0, 1]

    @property
    def top_move(self) -> str:
        return next(iter(self.move_probs))


def encode_fens(fens) -> tuple[torch.Tensor, torch.Tensor, list[chess.Board]]:
    """(planes [N,18,8,8], legal mask [N,1880], boards) for a list of FENs."""
    boards = [parse_fen(f) for f in fens]
    return torch.from_numpy(board_planes(boards)), torch.from_numpy(legal_mask(boards)), boards


def _buckets(elo, n: int, what: str) -> torch.Tensor:
    expected = "expected a rating (e.g. 1500) or an Elo bucket 0..10, one for all FENs or one per FEN"
    if elo is None:
        raise MaiaAdaptError(f"predict: {what} is None: {expected}")
    arr = np.asarray(elo, dtype=object)
    if arr.ndim > 1 or (arr.ndim == 1 and len(arr) not in (1, n)):
        raise MaiaAdaptError(f"predict: {what} has {arr.size} values for {n} FENs: {expected}")
    vals = np.broadcast_to(arr, (n,))
    try:
        return torch.tensor([as_bucket(v) for v in vals], dtype=torch.long)
    except (TypeError, ValueError) as e:
        raise MaiaAdaptError(f"predict: {what}: {e}: {expected}") from None


def masked_probs(logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    """Softmax over the legal moves of each row; a row with no legal move is an error, not NaNs."""
    empty = ~legal.any(dim=-1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise MaiaAdaptError(f"masked_probs: row {rows[0]} of the legal-move mask has no legal move "
                             f"({len(rows)} such rows): expected at least one legal move per position")
    return legal_logits(logits, legal).softmax(dim=-1)


def legal_logits(logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    """float32 logits with the illegal moves at -inf (what every move choice and loss reads)."""
    return logits.float().masked_fill(~legal, float("-inf"))


def top_move(logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's most likely legal move (the model's top-1 choice)."""
    return legal_logits(logits, legal).argmax(-1)


class BucketTop1:
    """Top-1 hits on the played move, counted per Elo bucket of the player to move."""

    def __init__(self):
        self.correct, self.count = np.zeros(NUM_BUCKETS), np.zeros(NUM_BUCKETS)

    def add(self, pred: torch.Tensor, move: torch.Tensor, bucket: torch.Tensor) -> None:
        b = bucket.cpu().numpy()
        np.add.at(self.correct, b, (pred == move).cpu().numpy())
        np.add.at(self.count, b, 1)

    def results(self) -> dict:
        """accuracy overall and accuracy_bucket_<b> (NaN for a bucket with no position)."""
        res = {"accuracy": float(self.correct.sum() / max(self.count.sum(), 1))}
        for i in range(NUM_BUCKETS):
            res[f"accuracy_bucket_{i}"] = float(self.correct[i] / self.count[i]) if self.count[i] else float("nan")
        return res


@torch.no_grad()
def predict(model, fens, elo_self, elo_oppo, batch_size: int = 512) -> list[Prediction]:
    """Predictions for FEN(s); Elo as a rating (e.g. 1500) or a bucket 0..10, scalar or per FEN."""
    single = isinstance(fens, str)
    fens = [fens] if single else list(fens)
    if not fens:
        raise MaiaAdaptError("predict: empty position set (no FENs given)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise MaiaAdaptError(f"predict: batch_size={batch_size!r}: expected a positive integer")
    es, eo = _buckets(elo_self, len(fens), "elo_self"), _buckets(elo_oppo, len(fens), "elo_oppo")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[Prediction] = []
    for s in range(0, len(fens), batch_size):
        planes, legal, boards = encode_fens(fens[s : s + batch_size])
        logits, _, value = model(planes.to(device), es[s : s + batch_size].to(device), eo[s : s + batch_size].to(device))
        probs = masked_probs(logits, legal.to(device)).cpu()
        win = (value.float() / 2 + 0.5).clamp(0, 1).cpu()
        for j, board in enumerate(boards):
            white = board.turn == chess.WHITE
            idx = legal[j].nonzero().flatten()
            p = probs[j, idx]
            order = torch.argsort(p, descending=True, stable=True)
            moves = {decode_move(int(idx[o]), white): float(p[o]) for o in order}
            w = float(win[j])
            out.append(Prediction(fens[s + j], moves, w if white else 1.0 - w))
    model.train(was_training)
    return out[0] if single else out
