"""Maia-2 with named hook points, checkpoint loading and batched inference; Maia-1 from lc0 weights."""
from .checkpoint import infer_config, load_model, read_checkpoint, save_model
from .inference import Prediction, encode_fens, masked_probs, parse_fen, predict
from .lc0_weights import read_lc0_net
from .maia1 import MAIA1_RATINGS, Maia1, load_maia1, load_maia1_family
from .maia2 import Maia2, Maia2Config
from .maia2_sites import hook_names

__all__ = [
    "infer_config", "load_model", "read_checkpoint", "save_model", "Prediction", "encode_fens",
    "masked_probs", "parse_fen", "predict", "read_lc0_net", "MAIA1_RATINGS", "Maia1", "load_maia1",
    "load_maia1_family", "Maia2", "Maia2Config", "hook_names",
]
