"""Chess encoding shared by every stage: move vocabulary, Elo buckets, board planes, side info; lc0's
112 input planes and 1858 moves for Maia-1 (lc0.py)."""
from .elo import BUCKET_NAMES, NUM_BUCKETS, as_bucket, elo_to_bucket
from .lc0 import (
    LC0_MOVES,
    decode_policy,
    lc0_move_index,
    lc0_planes,
    lc0_planes_game,
    lc0_policy_to_maia2,
    legal_mask_lc0,
    unpack_lc0_planes,
)
from .planes import (
    LEGAL_BYTES,
    NUM_PLANES,
    SIDE_INFO_DIM,
    PackedBoards,
    board_planes,
    legal_mask,
    legal_move_indices,
    move_facts,
    pack_board,
    pack_boards,
    pack_mask,
    parse_fen,
    side_info_targets,
    unpack_mask,
    unpack_planes,
)
from .vocab import NUM_MOVES, all_moves, decode_move, encode_move, mirror_move, move_to_index

__all__ = [
    "BUCKET_NAMES", "NUM_BUCKETS", "as_bucket", "elo_to_bucket", "LC0_MOVES", "decode_policy",
    "lc0_move_index", "lc0_planes", "lc0_planes_game", "lc0_policy_to_maia2", "legal_mask_lc0",
    "unpack_lc0_planes", "LEGAL_BYTES", "NUM_PLANES", "SIDE_INFO_DIM", "PackedBoards", "board_planes",
    "legal_mask", "legal_move_indices", "move_facts", "pack_board", "pack_boards", "pack_mask", "parse_fen",
    "side_info_targets", "unpack_mask", "unpack_planes", "NUM_MOVES", "all_moves", "decode_move",
    "encode_move", "mirror_move", "move_to_index",
]
