"""Chess concepts as binary labels per position, and how well features detect them (ROC-AUC)."""
from .auc import best_auc_per_concept, paired_auc, roc_auc_matrix
from .board import BoardConcepts, piece_square_concepts
from .chess_concepts import (
    FAMILIES,
    SEED172_CATEGORIES,
    SEED172_SEED_NAMES,
    ConceptSpec,
    all_position_concepts,
    board_state_concepts,
    check_families,
    concept_specs,
    position_concepts,
    seed172_concepts,
    select_families,
    strategic_concepts,
    study_concepts,
    threat_concepts,
)
from .realworld import load_puzzles, load_sts

__all__ = [
    "FAMILIES",
    "SEED172_CATEGORIES",
    "SEED172_SEED_NAMES",
    "BoardConcepts",
    "ConceptSpec",
    "all_position_concepts",
    "best_auc_per_concept",
    "board_state_concepts",
    "check_families",
    "concept_specs",
    "load_puzzles",
    "load_sts",
    "paired_auc",
    "piece_square_concepts",
    "position_concepts",
    "roc_auc_matrix",
    "seed172_concepts",
    "select_families",
    "strategic_concepts",
    "study_concepts",
    "threat_concepts",
]
