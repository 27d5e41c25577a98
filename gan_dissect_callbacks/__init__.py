"""gan_dissect_callbacks: dissect a GAN while it trains (GAN Dissection as Lightning callbacks).

Example:
    >>> from gan_dissect_callbacks import DissectionCallback
    >>> from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
    >>> cb = DissectionCallback(["generator.layer3"], load_toy_segmenter(), every_n_train_steps=500)
    >>> cb.every_n_train_steps
    500
"""

from gan_dissect_callbacks.callbacks import (
    ArtifactPruningCallback,
    DissectionCallback,
    InterventionCallback,
    QualityMonitor,
)
from gan_dissect_callbacks.engines import AnalysedGenerator, DissectionReport, dissect
from gan_dissect_callbacks.metrics import UnitConceptIoU
from gan_dissect_callbacks.segmenters import ConceptVocabulary, ModuleSegmenter, Segmenter

__version__ = "0.1.0"

__all__ = [
    "AnalysedGenerator",
    "ArtifactPruningCallback",
    "ConceptVocabulary",
    "DissectionCallback",
    "DissectionReport",
    "InterventionCallback",
    "ModuleSegmenter",
    "QualityMonitor",
    "Segmenter",
    "UnitConceptIoU",
    "dissect",
]
