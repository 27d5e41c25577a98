"""Which units to edit, and where: rankings read from a dissection, patches of a featuremap."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_int, check_size
from gan_dissect_callbacks.engines.intervention._prepared import concept_index

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import DissectionReport

__all__ = ["iou_ranking", "iou_scores", "patch_locations"]


def patch_locations(
    featuremap_size: tuple[int, int], patch_size: int, stride: int | None = None
) -> Tensor:
    """Square patches on a grid, as locations P for the intervention functions.

    Args:
        featuremap_size: ``(h, w)`` of the edited layer's featuremap.
        patch_size: side of each patch, in featuremap pixels.
        stride: distance between patch corners; ``patch_size`` (non-overlapping) by default.

    Returns:
        ``[L, h, w]`` bool, one patch per location, row-major.

    Example:
        >>> patch_locations((4, 4), 2).shape
        torch.Size([4, 4, 4])
        >>> patch_locations((4, 4), 2)[1].int().tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    """
    h, w = check_size(featuremap_size, "featuremap_size")
    if not isinstance(patch_size, int) or not 1 <= patch_size <= min(h, w):
        raise ValueError(
            f"Expected argument `patch_size` to be an int in [1, {min(h, w)}] for a {h}x{w} "
            f"featuremap, but got {patch_size!r}."
        )
    step = patch_size if stride is None else check_int(stride, "stride", optional=True)
    patches = []
    for top in range(0, h - patch_size + 1, step):
        for left in range(0, w - patch_size + 1, step):
            p = torch.zeros(h, w, dtype=torch.bool)
            p[top : top + patch_size, left : left + patch_size] = True
            patches.append(p)
    return torch.stack(patches)


def iou_scores(report: DissectionReport, layer: str, concept: str) -> list[float]:
    """Every unit's IoU with ``concept`` in a dissection report (NaN read as 0).

    Use it as the initial α of :func:`optimize_alpha`.
    """
    if layer not in report.layers:
        raise ValueError(
            f"Expected argument `layer` to be a layer of the dissection report "
            f"({', '.join(report.layers)}), but got {layer!r}."
        )
    c = concept_index(report.vocabulary, concept)
    return [0.0 if math.isnan(row[c]) else float(row[c]) for row in report.layers[layer].iou]


def iou_ranking(report: DissectionReport, layer: str, concept: str) -> list[int]:
    """Every unit of ``layer`` by decreasing IoU with ``concept`` (ties: lower index first).

    Example:
        >>> from types import SimpleNamespace
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary.from_pairs([("sky", "object"), ("tree", "object")])
        >>> layer = SimpleNamespace(iou=[[0.1, 0.0], [0.3, 0.2], [0.3, 0.5]])
        >>> report = SimpleNamespace(vocabulary=vocab, layers={"layer3": layer})
        >>> iou_ranking(report, "layer3", "sky")
        [1, 2, 0]
    """
    scores = iou_scores(report, layer, concept)
    return sorted(range(len(scores)), key=lambda u: (-scores[u], u))
