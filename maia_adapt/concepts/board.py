"""Board-state concepts read straight from Maia-2's input planes.

The positions are as the model sees them: Black-to-move boards are mirrored, so "own" is always the
side to move and squares are named from its point of view (own pieces start on ranks 1-2).
"""
from __future__ import annotations

from dataclasses import dataclass

import chess
import torch

_PIECES = ["pawn", "knight", "bishop", "rook", "queen", "king"]


@dataclass
class BoardConcepts:
    labels: torch.Tensor  # [N, C] bool
    names: list[str]

    def keep(self, min_positives: int) -> "BoardConcepts":
        """Only the concepts with at least min_positives positive and negative samples."""
        pos = self.labels.sum(0)
        ok = (pos >= min_positives) & (len(self.labels) - pos >= min_positives)
        return BoardConcepts(self.labels[:, ok], [n for n, k in zip(self.names, ok.tolist()) if k])


def piece_square_concepts(boards: torch.Tensor) -> BoardConcepts:
    """768 concepts "<own|opp>_<piece>@<square>" from planes [N, 18, 8, 8]."""
    names = [f"{side}_{p}@{chess.square_name(sq)}" for side in ("own", "opp") for p in _PIECES for sq in range(64)]
    return BoardConcepts(boards[:, :12].reshape(len(boards), 12 * 64) > 0.5, names)
