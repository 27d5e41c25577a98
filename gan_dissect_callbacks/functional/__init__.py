"""Pure tensor math of the method: IoU, IQR, threshold rules, upsampling, SWD (per set too)."""

from gan_dissect_callbacks.functional.iou import iou_from_counts
from gan_dissect_callbacks.functional.iqr import (
    information_quality_ratio,
    joint_entropy,
    mutual_information,
)
from gan_dissect_callbacks.functional.swd import SlicedWassersteinResult, sliced_wasserstein, swd
from gan_dissect_callbacks.functional.swd_sets import unit_swd_scores
from gan_dissect_callbacks.functional.threshold import iqr_rule, quantile_rule
from gan_dissect_callbacks.functional.unit_concept import UnitConceptIoUResult, unit_concept_iou
from gan_dissect_callbacks.functional.upsample import upsample_activations

__all__ = [
    "SlicedWassersteinResult",
    "UnitConceptIoUResult",
    "information_quality_ratio",
    "iou_from_counts",
    "iqr_rule",
    "joint_entropy",
    "mutual_information",
    "quantile_rule",
    "sliced_wasserstein",
    "swd",
    "unit_concept_iou",
    "unit_swd_scores",
    "upsample_activations",
]
