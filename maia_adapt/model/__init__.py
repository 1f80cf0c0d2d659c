"""Maia-2 with named hook points, checkpoint loading and batched inference."""
from .checkpoint import infer_config, load_model, read_checkpoint, save_model
from .inference import Prediction, encode_fens, masked_probs, parse_fen, predict
from .maia2 import Maia2, Maia2Config, hook_names

__all__ = [n for n in dir() if not n.startswith("_")]
