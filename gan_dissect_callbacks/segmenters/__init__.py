"""The segmenter protocol, concept vocabularies and adapters (optional packages load lazily)."""

from gan_dissect_callbacks.segmenters.ade20k import ADE20K_VOCABULARY
from gan_dissect_callbacks.segmenters.base import (
    GroundTruthSegmenter,
    Segmenter,
    check_images,
    check_segmentation,
    checked_segment,
)
from gan_dissect_callbacks.segmenters.module import ModuleSegmenter
from gan_dissect_callbacks.segmenters.vocabulary import Concept, ConceptVocabulary

__all__ = [
    "ADE20K_VOCABULARY",
    "Concept",
    "ConceptVocabulary",
    "GroundTruthSegmenter",
    "ModuleSegmenter",
    "Segmenter",
    "check_images",
    "check_segmentation",
    "checked_segment",
]
