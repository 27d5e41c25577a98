"""torchmetrics ``Metric`` classes with fixed-size states that merge exactly under DDP."""

from gan_dissect_callbacks.metrics.quality import DiscriminatorScore, make_fid
from gan_dissect_callbacks.metrics.swd import SlicedWassersteinDistance
from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU

__all__ = ["DiscriminatorScore", "SlicedWassersteinDistance", "UnitConceptIoU", "make_fid"]
