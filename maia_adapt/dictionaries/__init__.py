"""Sparse dictionaries of model activations: SAEs (JumpReLU, TopK, BatchTopK, ReLU-L1) and their training."""
from .files import find_saes, load_sae, save_sae
from .sae import ARCHITECTURES, SAEConfig, SparseAutoencoder, geometric_median
from .train import DictionaryTrainer, chunk_batches, train_dictionaries

__all__ = ["ARCHITECTURES", "DictionaryTrainer", "SAEConfig", "SparseAutoencoder", "chunk_batches",
           "find_saes", "geometric_median", "load_sae", "save_sae", "train_dictionaries"]
