"""Chess encoding shared by every stage: move vocabulary, Elo buckets, board planes, side info."""
from .elo import BUCKET_NAMES, NUM_BUCKETS, as_bucket, elo_to_bucket
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
    side_info_targets,
    unpack_mask,
    unpack_planes,
)
from .vocab import NUM_MOVES, all_moves, decode_move, encode_move, mirror_move, move_to_index

__all__ = [n for n in dir() if not n.startswith("_")]
