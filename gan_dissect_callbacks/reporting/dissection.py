"""Write a :class:`~gan_dissect_callbacks.engines.dissection.DissectionReport` to TensorBoard.

Shared by :class:`~gan_dissect_callbacks.callbacks.dissection.DissectionCallback` (during
training) and the ``gan-dissect`` command (post hoc), so both produce the same views:

* :func:`summarise` turns a report into the numbers that are plotted over training (and the
  unit labels needed for label stability at the next dissection);
* :func:`scalar_values` names those numbers with their scalar tags;
* :func:`unit_galleries` draws each layer's gallery from the example images the report carries
  (``report.examples``, see ``dissect(..., top_n=...)``); no model runs here;
* :func:`log_dissection` writes scalars, histograms, images and text to one ``SummaryWriter``.

Every tag starts with ``prefix``, the analysis's name: ``"dissection"`` unless several
dissections are logged side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gan_dissect_callbacks.reporting.charts import category_chart, figure_to_image
from gan_dissect_callbacks.reporting.galleries import GalleryRow, unit_gallery
from gan_dissect_callbacks.reporting.layouts import (
    custom_scalars_layout,
    label_stability,
    layer_scalar_tags,
)
from gan_dissect_callbacks.reporting.tables import units_markdown

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import DissectionReport, UnitReport

__all__ = ["log_dissection", "scalar_values", "summarise", "unit_galleries"]


def summarise(
    report: DissectionReport, previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The per-layer numbers plotted over training, and the unit labels.

    Args:
        report: a dissection.
        previous: the summary of the previous dissection (for label stability), if any.

    Returns:
        ``{"step", "layers": {layer: {"interpretable_units": {category: n}, "total",
        "distinct_concepts", "label_stability" (None for the first), "mean_best_iou",
        "labels"}}}`` — plain values only, so it can live in a checkpoint.
    """
    before = previous["layers"] if previous else {}
    categories = report.vocabulary.categories
    layers: dict[str, Any] = {}
    for name, layer in report.layers.items():
        labels = report.labels(name)
        counts = layer.counts_by_category(categories)
        prev_labels = before.get(name, {}).get("labels")
        stability = label_stability(prev_labels, labels) if prev_labels is not None else None
        best = [u.iou for u in layer.units]
        layers[name] = {
            "interpretable_units": counts,
            "total": sum(counts.values()),
            "distinct_concepts": len(layer.counts_by_concept()),
            "label_stability": stability,
            "mean_best_iou": sum(best) / len(best),
            "labels": labels,
        }
    return {"step": report.step, "layers": layers}


def scalar_values(
    summary: Mapping[str, Any], categories: Sequence[str], *, prefix: str = "dissection"
) -> dict[str, float]:
    """The scalar tags and values of a :func:`summarise` result (label stability only if known).

    Example:
        >>> summary = {"layers": {"layer3": {"interpretable_units": {"object": 2}, "total": 2,
        ...     "distinct_concepts": 1, "mean_best_iou": 0.25, "label_stability": None}}}
        >>> scalar_values(summary, ["object"], prefix="ema")
        {'ema/layer3/interpretable_units/object': 2.0, 'ema/layer3/interpretable_units/total': 2.0, 'ema/layer3/distinct_concepts': 1.0, 'ema/layer3/mean_best_iou': 0.25}
    """  # noqa: E501
    scalars: dict[str, float] = {}
    for name, numbers in summary["layers"].items():
        tags = layer_scalar_tags(name, categories, prefix=prefix)
        for category, count in numbers["interpretable_units"].items():
            scalars[tags[f"interpretable_units/{category}"]] = float(count)
        scalars[tags["interpretable_units/total"]] = float(numbers["total"])
        scalars[tags["distinct_concepts"]] = float(numbers["distinct_concepts"])
        scalars[tags["mean_best_iou"]] = float(numbers["mean_best_iou"])
        if numbers["label_stability"] is not None:
            scalars[tags["label_stability"]] = float(numbers["label_stability"])
    return scalars


def _row_title(layer: str, unit: UnitReport) -> str:
    iou = "" if math.isnan(unit.iou) else f" IoU {unit.iou:.2f}"
    label = unit.concept if unit.interpretable else f"({unit.concept})"
    return f"{layer} #{unit.unit} {label}{iou}"


def unit_galleries(report: DissectionReport) -> dict[str, Tensor]:
    """Per layer with examples, a gallery of its best units and their top samples.

    One row per :class:`~gan_dissect_callbacks.engines.dissection.UnitExamples` of
    ``report.examples[layer]`` (the order :func:`dissect` chose: interpretable units first, by
    IoU), titled ``"{layer} #{unit} {concept} IoU 0.23"`` (the concept in parentheses when the
    unit is not interpretable). A report without examples (``top_n=0``, or read from JSON) gives
    no gallery.

    Returns:
        ``{layer: [3, H, W] image in [0, 1]}``, see
        :func:`~gan_dissect_callbacks.reporting.galleries.unit_gallery`.
    """
    galleries: dict[str, Tensor] = {}
    for name, examples in report.examples.items():
        if not examples:
            continue
        units = {u.unit: u for u in report.layers[name].units}
        rows = [GalleryRow(_row_title(name, units[e.unit]), e.images, e.masks) for e in examples]
        galleries[name] = unit_gallery(rows)
    return galleries


def log_dissection(
    writer: Any,
    report: DissectionReport,
    summary: Mapping[str, Any],
    *,
    write_layout: bool = False,
    prefix: str = "dissection",
) -> None:
    """Write one dissection to a TensorBoard ``SummaryWriter`` at step ``summary["step"]``.

    Scalars (:func:`scalar_values`), per layer a histogram of the units' best IoU, the unit-class
    chart, the units table and, when the report carries examples, the gallery
    (:func:`unit_galleries`); with ``write_layout`` also the custom-scalars layout. The caller
    flushes (``ReportOutput.tensorboard()`` does).
    """
    step = int(summary["step"] or 0)
    vocabulary = report.vocabulary
    if write_layout:
        layout = custom_scalars_layout(list(report.layers), vocabulary.categories, prefix=prefix)
        writer.add_custom_scalars(layout)
    for tag, value in scalar_values(summary, vocabulary.categories, prefix=prefix).items():
        writer.add_scalar(tag, value, global_step=step)
    galleries = unit_galleries(report)
    for name, layer in report.layers.items():
        tag = f"{prefix}/{name}"
        writer.add_histogram(f"{tag}/best_iou", torch.tensor([u.iou for u in layer.units]), step)
        writer.add_image(
            f"{tag}/unit_classes",
            figure_to_image(category_chart(layer, vocabulary)),
            global_step=step,
        )
        writer.add_text(
            f"{tag}/units",
            units_markdown(layer, categories=vocabulary.categories),
            global_step=step,
        )
        if name in galleries:
            writer.add_image(f"{tag}/gallery", galleries[name], global_step=step)
