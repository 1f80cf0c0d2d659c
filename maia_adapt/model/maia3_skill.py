"""Maia-3 behind the SkillModel interface (model/skill.py).

Maia-3's Elo is a continuous rating; the interface's conditionings are Maia-2's 11 buckets, so a
bucket stands for one rating, its midpoint (encoding/elo.py `bucket_midpoint`): bucket 0 (<1100)
-> 1000, buckets 1..9 -> 1150, 1250, ..., 1950, bucket 10 (>=2000) -> 2100. A store's positions
carry their players' buckets, so "the players' own Elo" is that bucket's rating too. `ratings`
replaces the 11 ratings (one per bucket index, in increasing order) where a caller wants others.

Inputs: the 64 square tokens with the game's 8-position history (`tokens`), rebuilt from the store's
move history, one replay per game. Moves come back in Maia-2's 1880-move vocabulary (every legal move
is in it); value is P(win) - P(loss) of the side to move.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..encoding import NUM_BUCKETS, legal_mask
from ..encoding.elo import bucket_midpoint
from ..encoding.maia3 import maia2_to_maia3, maia3_tokens, maia3_tokens_game
from ..errors import ConfigError
from .maia3 import Maia3
from .one_network import OneNetwork

BUCKET_RATINGS = tuple(bucket_midpoint(b) for b in range(NUM_BUCKETS))


def maia3_store_tokens(store, indices, history: int = 8) -> torch.Tensor:
    """float32 [n, 64, 12 * history] for store rows, each game replayed once."""
    idx = np.asarray(indices, dtype=np.int64)
    out = np.zeros((len(idx), 64, 12 * history), dtype=np.float32)
    for start_fen, moves, rows, ks in store.history_by_game(idx):
        out[rows] = maia3_tokens_game(start_fen, moves, ks.tolist(), history)
    return torch.from_numpy(out)


class Maia3Skill(OneNetwork):
    """A Maia-3 network behind the SkillModel interface (see the module docstring for the ratings)."""

    def __init__(self, model: Maia3, name: str = "maia3", ratings: Optional[Sequence[float]] = None):
        super().__init__(model, name)
        self.ratings = tuple(float(r) for r in (BUCKET_RATINGS if ratings is None else ratings))
        if len(self.ratings) != NUM_BUCKETS:
            raise ConfigError(f"Maia-3 ratings: {len(self.ratings)} given, expected one per Elo bucket ({NUM_BUCKETS})")
        self._to3 = torch.from_numpy(maia2_to_maia3())
        self._site_dims: dict[str, int] = {}

    def rating_for_bucket(self, bucket: int) -> float:
        if not 0 <= int(bucket) < NUM_BUCKETS:
            raise ValueError(f"Elo bucket {bucket} out of range: expected 0..{NUM_BUCKETS - 1}")
        return self.ratings[int(bucket)]

    def _ratings(self, elo, n: int) -> torch.Tensor:
        """Ratings [n] (float) for buckets given as a scalar, a sequence or a tensor."""
        b = torch.as_tensor(elo, dtype=torch.long)
        b = b.expand(n) if b.ndim == 0 else b.cpu()
        return torch.tensor(self.ratings)[b].to(self.device)

    def inputs(self, store, indices) -> dict[str, torch.Tensor]:
        batch = store.batch(indices)
        batch.pop("boards")  # Maia-2's planes; Maia-3 reads square tokens with history
        batch["tokens"] = maia3_store_tokens(store, indices, self.model.cfg.history)
        return batch

    def inputs_from_boards(self, boards) -> dict[str, torch.Tensor]:
        tokens = np.stack([maia3_tokens(b, self.model.cfg.history) for b in boards])
        return {"tokens": torch.from_numpy(tokens), "legal": torch.from_numpy(legal_mask(boards))}

    def to_maia2(self, logits3: torch.Tensor) -> torch.Tensor:
        """[B, 4352] Maia-3 move logits -> [B, 1880] in Maia-2's vocabulary."""
        return logits3[:, self._to3.to(logits3.device)]

    def _forward(self, inputs, elo_self, elo_oppo):
        tokens = inputs["tokens"].to(self.device)
        n = tokens.size(0)
        return self.model(tokens, self._ratings(elo_self, n), self._ratings(elo_oppo, n))

    def policy_logits(self, inputs, elo_self, elo_oppo) -> torch.Tensor:
        return self.to_maia2(self._forward(inputs, elo_self, elo_oppo)[0])

    def wdl(self, inputs, elo_self, elo_oppo) -> torch.Tensor:
        """[B, 3] win/draw/loss probabilities for the side to move (Maia-3's head is loss, draw, win)."""
        return self._forward(inputs, elo_self, elo_oppo)[1].float().softmax(-1).flip(-1)

    def value(self, inputs, elo_self, elo_oppo) -> torch.Tensor:
        p = self.wdl(inputs, elo_self, elo_oppo)
        return p[:, 0] - p[:, 2]

    def ponder(self, inputs, elo_self, elo_oppo) -> torch.Tensor:
        """[B] the ponder head's output (the package trains it on the player's thinking time)."""
        return self._forward(inputs, elo_self, elo_oppo)[2]

    def policy_logits_by_condition(self, inputs, conditions, hooks=None):
        """hooks: a list of fwd_hooks per condition (any site: only the board's term of the token
        projection, which no site sees, is shared between conditions)."""
        n = inputs["tokens"].size(0)
        pairs = [(self._ratings(es, n), self._ratings(eo, n)) for es, eo in conditions]
        return self.policy_logits_by_rating(inputs, pairs, hooks)

    def policy_logits_by_rating(self, inputs, pairs, hooks=None):
        """[B, 1880] logits under each (self rating, opponent rating) of `pairs` in turn, each a number
        or a tensor [B] of ratings (any real number, not only the buckets' 11): the continuous Elo."""
        tokens = inputs["tokens"].to(self.device)
        n = tokens.size(0)
        board = self.model.board_term(tokens)  # the Elo enters after it: one pass serves every condition
        for i, (rs, ro) in enumerate(pairs):
            rs, ro = (torch.as_tensor(r, dtype=torch.float32, device=self.device).expand(n) for r in (rs, ro))
            with self.model.hooks(hooks[i] if hooks else ()):
                yield self.to_maia2(self.model.move_logits(self.model.encode(tokens, rs, ro, board_term=board)))

    def conditions(self) -> list[tuple[int, list[int]]]:
        return [(b, [b]) for b in self.buckets]

    def label(self, bucket: int) -> str:
        r = self.rating_for_bucket(bucket)
        return f"Elo {int(r) if float(r).is_integer() else r}"

    def hooks(self, fwd_hooks):
        return self.model.hooks(fwd_hooks)

    def run_with_cache(self, inputs, elo_self, elo_oppo, names=None, *, names_filter=None):
        logits, _, cache = self.policy_value_with_cache(inputs, elo_self, elo_oppo, names, names_filter=names_filter)
        return logits, cache

    def policy_value_with_cache(self, inputs, elo_self, elo_oppo, names=None, *, names_filter=None):
        tokens = inputs["tokens"].to(self.device)
        n = tokens.size(0)
        (moves, wdl, _), cache = self.model.run_with_cache(tokens, self._ratings(elo_self, n),
                                                           self._ratings(elo_oppo, n), names, names_filter=names_filter)
        p = wdl.float().softmax(-1)
        return self.to_maia2(moves), p[:, 2] - p[:, 0], cache

    def check_hook_name(self, name: str) -> str:
        return self.model.check_hook_name(name)

    def site_tokens(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x  # every site is token-first already ([B, 64, ...], hook_elo [B, 2, dim_emb]) or [B, F]

    def site_dim(self, name: str) -> int:
        self.check_hook_name(name)
        if name not in self._site_dims:
            tokens = torch.zeros(1, 64, self.model.board_width, device=self.device)
            with torch.no_grad():
                _, cache = self.model.run_with_cache(tokens, self._ratings(0, 1), self._ratings(0, 1), names=[name])
            x = cache[name]
            self._site_dims[name] = int(x.shape[-1] if x.dim() == 2 else x[0, 0].numel())
        return self._site_dims[name]

    def spaces(self) -> list[tuple[int, list[int]]]:
        return [(0, list(self.buckets))]  # one network: one activation space for every rating

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def trainable_presets(self) -> dict[str, list[str]]:
        # the move head is the from/to projections and the promotion bias; the value and ponder heads
        # read the pooled tokens through last_ln
        policy = ["proj_sq_from.", "proj_sq_to.", "promo_bias_proj."]
        return {"all": [""], "policy_head": policy,
                "heads": [*policy, "last_ln.", "fc_value", "fc_ponder"],
                "transformer": ["transformer.", *policy]}

