"""Analyses that run without Lightning: dissection, intervention, artifact units."""

from gan_dissect_callbacks.engines.artifacts import (
    PruningMask,
    apply_pruning_from_checkpoint,
    find_artifact_units,
    score_units,
    verify_ablation,
)
from gan_dissect_callbacks.engines.dissection import (
    DissectionReport,
    LayerReport,
    UnitReport,
    dissect,
)
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.engines.intervention import (
    average_causal_effect,
    insertion_effect,
    optimize_alpha,
    removal_curve,
)

__all__ = [
    "AnalysedGenerator",
    "DissectionReport",
    "LayerReport",
    "PruningMask",
    "UnitReport",
    "apply_pruning_from_checkpoint",
    "average_causal_effect",
    "dissect",
    "find_artifact_units",
    "insertion_effect",
    "optimize_alpha",
    "removal_curve",
    "score_units",
    "verify_ablation",
]
