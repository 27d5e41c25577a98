"""Thin Lightning callbacks: cadence, harmlessness, DDP, logging."""

from gan_dissect_callbacks.callbacks.artifacts import ArtifactPruningCallback, QualityMonitor
from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
from gan_dissect_callbacks.callbacks.intervention import InterventionCallback

__all__ = [
    "ArtifactPruningCallback",
    "DissectionCallback",
    "InterventionCallback",
    "QualityMonitor",
]
