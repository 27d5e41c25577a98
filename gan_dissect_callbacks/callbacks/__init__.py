"""Thin Lightning callbacks: cadence, harmlessness, DDP, logging."""

from gan_dissect_callbacks.callbacks.artifact_pruning import ArtifactPruningCallback
from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
from gan_dissect_callbacks.callbacks.intervention import InterventionCallback
from gan_dissect_callbacks.callbacks.quality import QualityMonitor

__all__ = [
    "ArtifactPruningCallback",
    "DissectionCallback",
    "InterventionCallback",
    "QualityMonitor",
]
