"""The per-batch half of a dissection: each layer's IoU metric and its units' top-k samples.

A :class:`LayerStream` holds one layer's
:class:`~gan_dissect_callbacks.metrics.unit_concept_iou.UnitConceptIoU` (fixed-size counts,
summed across processes) and, per unit, the ``top_k`` largest spatial maxima seen so far with
their global sample indices (``[U, k]`` values and indices, merged batch after batch and, under
``torch.distributed``, across processes by :func:`gather_topk`).

Example:
    >>> import torch
    >>> values = torch.tensor([[0.5, 0.9, 0.9, 0.1]])
    >>> indices = torch.tensor([[3, 7, 2, 0]])
    >>> top, where = merge_topk(values, indices, 3)
    >>> top.tolist(), where.tolist()  # ties: the smaller sample index first
    ([[0.8999999761581421, 0.8999999761581421, 0.5]], [[2, 7, 3]])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from gan_dissect_callbacks.engines.distributed import all_gather_cat, dist_info
from gan_dissect_callbacks.engines.generator import featuremap_shape
from gan_dissect_callbacks.functional.unit_concept import UnitConceptIoUResult
from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU

__all__ = ["LayerStream", "StreamFactory", "gather_topk", "merge_topk"]


def merge_topk(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` largest per row; ties broken by the smaller sample index (deterministic)."""
    # Sort by index first, then a stable sort by value keeps the smaller index among equals.
    order = indices.argsort(dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    top = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, top), indices.gather(1, top)


def gather_topk(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Every process's top-k lists merged into the global top ``k`` (itself in one process)."""
    if dist_info()[1] == 1:
        return values, indices
    return merge_topk(all_gather_cat(values, 1), all_gather_cat(indices, 1), k)


class LayerStream:
    """One layer of a dissection: its metric and its units' top-``k`` activating samples.

    Args:
        name: the layer, for error messages.
        r: a first captured featuremap ``[B, U, h, w]`` (its shape and device size the metric).
        masks: the segmenter's masks of the same batch (their size is the metric's).
        num_concepts: the vocabulary's size.
        quantile: the quantile of the quantile rule.
        top_k: top-activating samples kept per unit (0: none).
        metric_kwargs: extra arguments of :class:`UnitConceptIoU`.

    Raises:
        ValueError: if ``r`` is not a ``[B, U, h, w]`` featuremap, naming the layer.
    """

    def __init__(
        self,
        name: str,
        r: Tensor,
        masks: Tensor,
        *,
        num_concepts: int,
        quantile: float,
        top_k: int,
        metric_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        num_units = featuremap_shape(name, r)[0]
        self.name = name
        self.metric = UnitConceptIoU(
            num_units,
            num_concepts,
            quantile=quantile,
            segmentation_size=tuple(masks.shape[-2:]),
            **dict(metric_kwargs or {}),
        ).to(r.device)
        self.top_k = top_k
        self._top: tuple[Tensor, Tensor] | None = None

    def update(self, r: Tensor, masks: Tensor, indices: Tensor) -> None:
        """Add one batch: featuremaps ``r``, concept masks, the samples' global indices.

        Raises:
            ValueError: if ``r`` holds NaN or Inf, naming the layer (the images may look fine).
        """
        if not bool(torch.isfinite(r).all()):
            raise ValueError(
                f"Expected finite activations at layer {self.name!r}, but got NaN or Inf values. "
                "Check the generator for diverged weights (the images can look fine when a "
                "later layer clips them) or a division by zero in that layer."
            )
        self.metric.update(r.float(), masks)
        if not self.top_k:
            return
        peak = r.float().amax(dim=(2, 3)).T.cpu()  # [U, B]
        idx = indices.view(1, -1).expand_as(peak)
        if self._top is not None:
            peak = torch.cat([self._top[0], peak], 1)
            idx = torch.cat([self._top[1], idx], 1)
        self._top = merge_topk(peak, idx, self.top_k)

    def compute(self) -> UnitConceptIoUResult:
        """The layer's unit × concept result (summed across processes)."""
        return self.metric.compute()

    def top_samples(self) -> tuple[list[list[float]], list[list[int]]] | None:
        """Per unit, its top activations and their sample indices, over all processes.

        Every process must call it under ``torch.distributed`` (it gathers); ``None`` when no
        top-k is kept.
        """
        if self._top is None:
            return None
        values, indices = gather_topk(*self._top, self.top_k)
        return values.tolist(), indices.tolist()


#: Makes a layer's stream from its first featuremap and that batch's concept masks, e.g.
#: ``functools.partial(LayerStream, num_concepts=..., quantile=..., top_k=...)``.
StreamFactory = Callable[[str, Tensor, Tensor], LayerStream]
