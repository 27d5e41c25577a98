"""Write a :class:`~gan_dissect_callbacks.engines.dissection.DissectionReport` to TensorBoard.

Shared by :class:`~gan_dissect_callbacks.callbacks.dissection.DissectionCallback` (during
training) and the ``gan-dissect`` command (post hoc), so both produce the same views:

* :func:`summarise` turns a report into the numbers that are plotted over training (and the
  unit labels needed for label stability at the next dissection);
* :func:`scalar_values` names those numbers with their scalar tags;
* :func:`unit_galleries` draws each layer's gallery from the example images the report carries
  (``report.examples``, see ``dissect(..., top_n=...)``); no model runs here;
* :func:`run_scalars` gives the same numbers as one TensorBoard run per layer and per category,
  so that combined charts draw one coloured line per layer (or category) with a legend;
* :func:`log_dissection` writes scalars, histograms, images and text to one ``SummaryWriter``
  and its runs, and, given the history, each layer's top units over training
  (:mod:`~gan_dissect_callbacks.reporting.evolution`).

Every tag starts with ``prefix``, the analysis's name: ``"dissection"`` unless several
dissections are logged side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gan_dissect_callbacks.reporting.charts import category_chart
from gan_dissect_callbacks.reporting.evolution import (
    timeline_markdown,
    timeline_pixels,
    unit_timeline,
)
from gan_dissect_callbacks.reporting.galleries import (
    GalleryRow,
    unit_gallery,
    unit_gallery_pixels,
)
from gan_dissect_callbacks.reporting.images import ImageLog
from gan_dissect_callbacks.reporting.layouts import (
    category_run,
    custom_scalars_layout,
    label_stability,
    layer_run,
    layer_scalar_tags,
)
from gan_dissect_callbacks.reporting.tables import units_markdown
from gan_dissect_callbacks.reporting.writing import RunWriters, write_run_scalars

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import DissectionReport, UnitReport

__all__ = [
    "GALLERY_PAGE_ROWS",
    "log_dissection",
    "run_scalars",
    "scalar_values",
    "summarise",
    "unit_galleries",
]


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
        "labels", "ious"}}}`` (``ious``: every unit's best IoU, ``None`` where undefined) —
        plain values only, so it can live in a checkpoint.
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
            "ious": [None if math.isnan(u.iou) else float(u.iou) for u in layer.units],
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


def run_scalars(
    summary: Mapping[str, Any], categories: Sequence[str], *, prefix: str = "dissection"
) -> dict[str, dict[str, float]]:
    """The numbers of :func:`scalar_values` as TensorBoard runs: ``{run: {tag: value}}``.

    TensorBoard colours a chart's lines by run, so a tag written in several runs is one chart
    with one coloured line per run. Each layer's run
    (:func:`~gan_dissect_callbacks.reporting.layouts.layer_run`) holds
    ``{prefix}/interpretable_units/{category}`` (and ``/total``), ``{prefix}/distinct_concepts``,
    ``{prefix}/label_stability`` (when known) and ``{prefix}/mean_best_iou``: one chart per
    number, one line per layer. Each category's run
    (:func:`~gan_dissect_callbacks.reporting.layouts.category_run`, ``"total"`` too) holds
    ``{prefix}/{layer}/interpretable_units``: one chart per layer, one line per category.

    Example:
        >>> summary = {"layers": {"layer3": {"interpretable_units": {"object": 2}, "total": 2,
        ...     "distinct_concepts": 1, "mean_best_iou": 0.25, "label_stability": None}}}
        >>> runs = run_scalars(summary, ["object"])
        >>> runs["dissection/layer3"]["dissection/mean_best_iou"]
        0.25
        >>> runs["dissection/categories/object"]
        {'dissection/layer3/interpretable_units': 2.0}
    """
    runs: dict[str, dict[str, float]] = {}
    for name, numbers in summary["layers"].items():
        layer_scalar_tags(name, categories, prefix=prefix)  # the names' checks
        layer = runs.setdefault(layer_run(name, prefix=prefix), {})
        counts = {**numbers["interpretable_units"], "total": numbers["total"]}
        for category, count in counts.items():
            layer[f"{prefix}/interpretable_units/{category}"] = float(count)
            run = runs.setdefault(category_run(category, prefix=prefix), {})
            run[f"{prefix}/{name}/interpretable_units"] = float(count)
        for key in ("distinct_concepts", "mean_best_iou", "label_stability"):
            if numbers[key] is not None:
                layer[f"{prefix}/{key}"] = float(numbers[key])
    return runs


def _row_title(layer: str, unit: UnitReport) -> str:
    iou = "" if math.isnan(unit.iou) else f" IoU {unit.iou:.2f}"
    label = unit.concept if unit.interpretable else f"({unit.concept})"
    return f"{layer} #{unit.unit} {label}{iou}"


#: Units per gallery image: three rows keep the labels ≥ 10 px on screen in TensorBoard's
#: Time series card too, which shrinks an image to fit its height as well as its width.
GALLERY_PAGE_ROWS = 3


def unit_galleries(
    report: DissectionReport, rows_per_page: int | None = GALLERY_PAGE_ROWS
) -> dict[str, list[Tensor]]:
    """Per layer with examples, galleries of its best units and their top samples.

    One row per :class:`~gan_dissect_callbacks.engines.dissection.UnitExamples` of
    ``report.examples[layer]`` (the order :func:`dissect` chose: interpretable units first, by
    IoU), titled ``"{layer} #{unit} {concept} IoU 0.23"`` (the concept in parentheses when the
    unit is not interpretable), ``rows_per_page`` rows per image (``None``: all in one). A report
    without examples (``top_n=0``, or read from JSON) gives no gallery.

    Returns:
        ``{layer: [page 0, page 1, ...]}``, each a ``[3, H, W]`` image in ``[0, 1]`` (see
        :func:`~gan_dissect_callbacks.reporting.galleries.unit_gallery`) of the same width.
    """
    return {
        name: [unit_gallery(page) for page in pages]
        for name, pages in _gallery_pages(report, rows_per_page).items()
    }


def _gallery_pages(
    report: DissectionReport, rows_per_page: int | None
) -> dict[str, list[list[GalleryRow]]]:
    pages: dict[str, list[list[GalleryRow]]] = {}
    for name, examples in report.examples.items():
        if not examples:
            continue
        units = {u.unit: u for u in report.layers[name].units}
        rows = [GalleryRow(_row_title(name, units[e.unit]), e.images, e.masks) for e in examples]
        step = rows_per_page or len(rows)
        pages[name] = [rows[i : i + step] for i in range(0, len(rows), step)]
    return pages


def log_dissection(
    writer: Any,
    report: DissectionReport,
    summary: Mapping[str, Any],
    *,
    write_layout: bool = False,
    prefix: str = "dissection",
    runs: RunWriters | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    timeline_units: int = 12,
) -> None:
    """Write one dissection to a TensorBoard ``SummaryWriter`` at step ``summary["step"]``.

    Scalars (:func:`scalar_values`) in the writer's own run and, beside it, the runs of
    :func:`run_scalars` (the combined, coloured charts of the custom-scalars layout); per layer a
    histogram of the units' best IoU, the unit-class chart, the units table and, when the report
    carries examples, the gallery pages ``{prefix}/{layer}/gallery/{page}`` of
    :data:`GALLERY_PAGE_ROWS` units each (:func:`unit_galleries`); given the dissections so far
    (``history``, this one last), per layer the ``timeline_units`` best units' IoU and label at
    each step, as an image ``{prefix}/{layer}/unit_timeline`` (the last 8 steps) and a table
    (the last 16)
    ``{prefix}/{layer}/unit_timeline_table``; with
    ``write_layout`` also the custom-scalars layout. The caller flushes the writer
    (``ReportOutput.tensorboard()`` does). A ``SummaryWriter`` gets the images as the PNG
    files ``add_image`` would write, pixel for pixel, encoded here in a fraction of the time;
    the unit-class chart is drawn again only when its data changed
    (:func:`~gan_dissect_callbacks.reporting.charts.category_chart`).

    Args:
        writer: the ``SummaryWriter``.
        report: the dissection.
        summary: its :func:`summarise` result.
        write_layout: also write the custom-scalars layout (once per run is enough).
        prefix: the analysis's name, the tags' prefix.
        runs: the writers of the extra runs, kept by the caller across dissections (and closed
            by it); ``None``: opened for this call and closed at its end.
        history: the :func:`summarise` entries so far, oldest first (``None``: no timeline).
        timeline_units: units per layer in the timeline.
    """
    step = int(summary["step"] or 0)
    vocabulary = report.vocabulary
    if write_layout:
        layout = custom_scalars_layout(list(report.layers), vocabulary.categories, prefix=prefix)
        writer.add_custom_scalars(layout)
    for tag, value in scalar_values(summary, vocabulary.categories, prefix=prefix).items():
        writer.add_scalar(tag, value, global_step=step)
    write_run_scalars(
        writer, run_scalars(summary, vocabulary.categories, prefix=prefix), step, runs
    )
    galleries = _gallery_pages(report, GALLERY_PAGE_ROWS)
    with ImageLog(writer) as images:
        for name, layer in report.layers.items():
            tag = f"{prefix}/{name}"
            writer.add_histogram(
                f"{tag}/best_iou", torch.tensor([u.iou for u in layer.units]), step
            )
            images.add(f"{tag}/unit_classes", category_chart(layer, vocabulary).pixels, step)
            writer.add_text(
                f"{tag}/units",
                units_markdown(layer, categories=vocabulary.categories),
                global_step=step,
            )
            for page, rows in enumerate(galleries.get(name, [])):
                images.add(f"{tag}/gallery/{page}", unit_gallery_pixels(rows), step)
            if history:
                timeline = unit_timeline(history, name, top_n=timeline_units)
                images.add(f"{tag}/unit_timeline", timeline_pixels(timeline), step)
                table = unit_timeline(history, name, top_n=timeline_units, max_steps=16)
                writer.add_text(f"{tag}/unit_timeline_table", timeline_markdown(table), step)
