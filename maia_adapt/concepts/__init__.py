"""Chess concepts as binary labels per position, and how well features detect them (ROC-AUC)."""
from .auc import best_auc_per_concept, roc_auc_matrix
from .board import BoardConcepts, piece_square_concepts

__all__ = ["BoardConcepts", "best_auc_per_concept", "piece_square_concepts", "roc_auc_matrix"]
