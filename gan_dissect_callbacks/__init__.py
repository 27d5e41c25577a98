"""gan_dissect_callbacks: dissect a GAN while it trains (GAN Dissection as Lightning callbacks).

The names below are imported on first use (PEP 562), so that importing a light part of the
package (the ``gan-dissect`` parser, the argument checks) does not load Lightning and matplotlib.

Example:
    >>> from gan_dissect_callbacks import DissectionCallback
    >>> from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
    >>> cb = DissectionCallback(["generator.layer3"], load_toy_segmenter(), every_n_train_steps=500)
    >>> cb.every_n_train_steps
    500
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: The subpackage each public name is imported from.
_HOMES = {
    "AnalysedGenerator": "gan_dissect_callbacks.engines",
    "ArtifactPruningCallback": "gan_dissect_callbacks.callbacks",
    "ConceptVocabulary": "gan_dissect_callbacks.segmenters",
    "DissectionCallback": "gan_dissect_callbacks.callbacks",
    "DissectionReport": "gan_dissect_callbacks.engines",
    "InterventionCallback": "gan_dissect_callbacks.callbacks",
    "ModuleSegmenter": "gan_dissect_callbacks.segmenters",
    "QualityMonitor": "gan_dissect_callbacks.callbacks",
    "Segmenter": "gan_dissect_callbacks.segmenters",
    "UnitConceptIoU": "gan_dissect_callbacks.metrics",
    "dissect": "gan_dissect_callbacks.engines",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
