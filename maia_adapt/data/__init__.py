"""lichess PGN reading, the on-disk position store and self-play corpora."""
from .pgn import GameFilter, PGNError
from .preprocess import build_store, encode_game, open_or_build_store
from .store import PositionStore, store_from_fens

__all__ = ["GameFilter", "PGNError", "PositionStore", "build_store", "encode_game", "open_or_build_store", "store_from_fens"]
