"""What an intervention analysis shows: its scalars, removal-curve charts and image grids.

Pure functions of an intervention *entry* — the dict
:class:`~gan_dissect_callbacks.callbacks.intervention.InterventionCallback` records per run,
``{"step", "layer", "source", "concepts": {concept: numbers or None}}``, where ``numbers``
holds the ``"removal"`` curve, the ``"ace"``, the ``"insertion"`` (or ``None``) and, with the α
optimisation, ``"alpha_removal"`` as the engines' ``to_dict()`` — and of the engines' pictures
(:func:`~gan_dissect_callbacks.engines.intervention.intervention_images`). Tags start with the
analysis's name, ``"intervention"`` by default:

* scalars ``{name}/{c}/removed_at_n{n}``, ``random_removed_at_n{n}``, ``alpha_removed_at_n{n}``,
  ``ace``, ``inserted_fraction`` and ``random_inserted_fraction`` (:func:`intervention_scalars`);
* images ``{name}/{c}/removal_curve`` (:func:`removal_chart`) and ``{name}/{c}/images``
  (:func:`intervention_grid`, its rows labelled original / ablated / inserted with the units),
  written by :func:`log_intervention`, which also writes each concept's scalars once more in a
  TensorBoard run of its own, ``{log_dir}/{name}/{c}``, as ``{name}/removed_at_n{n}``, … (the
  tags of :func:`concept_run_scalars`): one chart per number, one coloured line per concept.

Example:
    >>> curve = {"removed": [0.5, 0.9], "random_mean": [0.1, 0.2]}
    >>> numbers = {"removal": curve, "ace": {"ace": 0.7}, "insertion": None}
    >>> entry = {"step": 4, "layer": "generator.layer3", "concepts": {"tree": numbers}}
    >>> intervention_scalars(entry, log_points=[2])
    {'intervention/tree/removed_at_n2': 0.9, 'intervention/tree/random_removed_at_n2': 0.2, \
'intervention/tree/ace': 0.7}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gan_dissect_callbacks.reporting.charts import LineChart, Series, line_chart
from gan_dissect_callbacks.reporting.images import (
    ImageLog,
    enlarge,
    image_grid,
    image_pixels,
    label_cap_height,
    label_font,
    text_band,
    text_width,
)
from gan_dissect_callbacks.reporting.writing import RunWriters, write_run_scalars

__all__ = [
    "REPORT_FORMAT",
    "concept_run_scalars",
    "intervention_grid",
    "intervention_scalars",
    "log_intervention",
    "removal_chart",
    "report_payload",
]

#: The ``"format"`` of an intervention's JSON report.
#: Version 2: a removal curve's lists hold its values at its ``points`` (version 1: at every n).
REPORT_FORMAT = "gan_dissect_callbacks.intervention/2"
#: Samples smaller than this (in pixels) are enlarged (nearest) in the image grid.
MIN_IMAGE_SIDE = 64


def report_payload(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON report of one entry: its format, then the entry itself."""
    return {"format": REPORT_FORMAT, **entry}


def intervention_scalars(
    entry: Mapping[str, Any], log_points: Sequence[int], *, name: str = "intervention"
) -> dict[str, float]:
    """The scalars of one entry, for the ``n`` of ``log_points`` that its curves reach.

    Concepts skipped at this step (``None``) give no scalars; neither does an insertion that
    found nowhere to insert, nor a random baseline that was not drawn.
    """
    scalars: dict[str, float] = {}
    for concept, numbers in entry["concepts"].items():
        if numbers is None:
            continue
        prefix = f"{name}/{concept}"
        curve = numbers["removal"]
        at = _point_index(curve)
        alpha_curve = numbers.get("alpha_removal")
        alpha_at = _point_index(alpha_curve) if alpha_curve is not None else {}
        for n in log_points:
            if n not in at:
                continue
            scalars[f"{prefix}/removed_at_n{n}"] = curve["removed"][at[n]]
            if curve["random_mean"]:
                scalars[f"{prefix}/random_removed_at_n{n}"] = curve["random_mean"][at[n]]
            if alpha_curve is not None and n in alpha_at:
                scalars[f"{prefix}/alpha_removed_at_n{n}"] = alpha_curve["removed"][alpha_at[n]]
        scalars[f"{prefix}/ace"] = numbers["ace"]["ace"]
        insertion = numbers["insertion"]
        if insertion is None:
            continue
        scalars[f"{prefix}/inserted_fraction"] = insertion["fraction_gained"]
        if insertion["random_fraction_gained"]:
            random_gain = insertion["random_fraction_gained"]
            scalars[f"{prefix}/random_inserted_fraction"] = sum(random_gain) / len(random_gain)
    return scalars


def _point_index(curve: Mapping[str, Any]) -> dict[int, int]:
    """``{n: entry}`` of a curve's lists; a curve without ``points`` holds every n = 1…N."""
    points = curve.get("points") or range(1, len(curve["removed"]) + 1)
    return {int(n): i for i, n in enumerate(points)}


def _chart_points(curve: Mapping[str, Any]) -> list[int]:
    """The unit counts the chart draws: 0 (nothing ablated), then the curve's points."""
    return [0, *_point_index(curve)]


def removal_chart(concept: str, numbers: Mapping[str, Any], layer: str) -> LineChart:
    """The removal curves of one concept: the IoU ranking, random units, the α ranking.

    Each curve is drawn through the unit counts it was evaluated at (its ``points``), from 0
    (nothing ablated).

    Example:
        >>> curve = {"removed": [0.5, 0.9], "random_mean": [0.1, 0.2]}
        >>> chart = removal_chart("tree", {"removal": curve}, "generator.layer3")
        >>> [(s.label, s.xs, s.ys) for s in chart.series]
        [('top units (IoU)', (0, 1, 2), (0.0, 0.5, 0.9)), ('random', (0, 1, 2), (0.0, 0.1, 0.2))]
    """
    curve = numbers["removal"]
    ns = tuple(_chart_points(curve))
    lines = [Series("top units (IoU)", ns, (0.0, *curve["removed"]), _BLUE, marker="o")]
    if "alpha_removal" in numbers:
        alpha_curve = numbers["alpha_removal"]
        alpha_ns = tuple(_chart_points(alpha_curve))
        lines.append(
            Series("top units (α)", alpha_ns, (0.0, *alpha_curve["removed"]), _ORANGE, marker="s")
        )
    if curve["random_mean"]:
        lines.append(Series("random", ns, (0.0, *curve["random_mean"]), _GREY, dashed=True))
    return line_chart(
        lines,
        title=f"{layer}: {concept}",
        x_label="units ablated",
        y_label="share of its pixels removed",  # the title names the concept
        y_ticks=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    )


#: The curves' colours: matplotlib's first two default colours, and grey.
_BLUE, _ORANGE, _GREY = (31, 119, 180), (255, 127, 14), (128, 128, 128)


def concept_run_scalars(
    entry: Mapping[str, Any], *, name: str = "intervention"
) -> dict[str, dict[str, float]]:
    """The scalars of :func:`intervention_scalars` as one TensorBoard run per concept.

    ``{run: {tag: value}}`` with run ``"{name}/{concept}"`` and tags without the concept,
    ``"{name}/removed_at_n{n}"``, …, at every n of the curves' points: a tag written in every
    concept's run is one chart with one coloured line per concept (TensorBoard colours by run).

    Example:
        >>> curve = {"removed": [0.5, 0.9], "random_mean": [], "points": [1, 5]}
        >>> numbers = {"removal": curve, "ace": {"ace": 0.7}, "insertion": None}
        >>> entry = {"step": 4, "layer": "l3", "concepts": {"tree": numbers, "sky": None}}
        >>> concept_run_scalars(entry)
        {'intervention/tree': {'intervention/removed_at_n1': 0.5, \
'intervention/removed_at_n5': 0.9, 'intervention/ace': 0.7}}
    """
    runs: dict[str, dict[str, float]] = {}
    for concept, numbers in entry["concepts"].items():
        if numbers is None:
            continue
        points = set(_point_index(numbers["removal"]))
        if numbers.get("alpha_removal") is not None:
            points |= set(_point_index(numbers["alpha_removal"]))
        scalars = intervention_scalars({"concepts": {concept: numbers}}, sorted(points), name=name)
        own = f"{name}/{concept}/"
        runs[f"{name}/{concept}"] = {
            f"{name}/{tag[len(own) :]}": value for tag, value in scalars.items()
        }
    return runs


#: The row labels of :func:`intervention_grid`, top to bottom.
GRID_ROWS = ("original", "ablated", "inserted")


def intervention_grid(shots: Mapping[str, Tensor], *, units: Sequence[int] | None = None) -> Tensor:
    """One image of the samples as drawn, ablated and inserted: a labelled row each.

    Samples under 64 px are enlarged (nearest): they are unreadable at native size in
    TensorBoard. Above each row a label says what it shows — ``"original"``,
    ``"ablated: units 3, 7"``, ``"inserted: units 3, 7"`` — in letters whose cap height follows
    :func:`~gan_dissect_callbacks.reporting.images.label_cap_height`, so they stay ≥ 10 px when
    TensorBoard's card shows the image 350 px wide. A label wider than the samples widens the
    image (white on the right).

    Args:
        shots: ``{"original", "ablated", "inserted"}`` images ``[N, C, H, W]`` in ``[-1, 1]``.
        units: the ablated and inserted units, named in the labels (``None``: not named).

    Example:
        >>> import torch
        >>> shots = {k: torch.zeros(2, 3, 32, 32) for k in ("original", "ablated", "inserted")}
        >>> grid = intervention_grid(shots, units=[3, 7])
        >>> grid.shape[0], grid.shape[2]  # 2 columns of 64 px, 2 px padding
        (3, 134)
    """
    columns = int(shots["original"].shape[0])
    named = (
        ""
        if units is None
        else f": unit{'' if len(units) == 1 else 's'} " + ", ".join(str(int(u)) for u in units)
    )
    grids = [
        image_grid(enlarge(shots[row], MIN_IMAGE_SIDE), nrow=columns, padding=2)
        for row in GRID_ROWS
    ]
    width = max(g.shape[2] for g in grids)
    font = label_font(label_cap_height(width))
    labels = [row if row == "original" else f"{row}{named}" for row in GRID_ROWS]
    # Many units make a label wider than the samples; it widens the image rather than be cut.
    width = max(width, *(text_width(label, font) + 4 for label in labels))
    blocks = []
    for label, grid in zip(labels, grids, strict=True):
        blocks.append(text_band(label, width, font))
        row = grid[:, 2:]  # the band's padding already separates it from the row above
        if row.shape[2] < width:
            pad = torch.ones(row.shape[0], row.shape[1], width - row.shape[2])
            row = torch.cat([row, pad], dim=2)
        blocks.append(row)
    return torch.cat(blocks, dim=1)


def log_intervention(
    writer: Any,
    entry: Mapping[str, Any],
    images: Mapping[str, Mapping[str, Tensor]],
    *,
    name: str = "intervention",
    runs: RunWriters | None = None,
) -> None:
    """Write one entry's charts and image grids to a TensorBoard ``SummaryWriter``.

    The scalars go through
    :meth:`~gan_dissect_callbacks.reporting.writing.ReportOutput.log_scalars` with
    :func:`intervention_scalars`, so that every logger gets them; here they are written once
    more, per concept, in the runs of :func:`concept_run_scalars` beside the writer's.

    Args:
        writer: the ``SummaryWriter`` (anything with ``add_image``).
        entry: the entry, at step ``entry["step"]``.
        images: per concept, the pictures of
            :func:`~gan_dissect_callbacks.engines.intervention.intervention_images`.
        name: the analysis's name, the tags' prefix.
        runs: the writers of the concepts' runs, kept by the caller across steps (and closed by
            it); ``None``: opened for this call and closed at its end.
    """
    step = int(entry["step"])
    write_run_scalars(writer, concept_run_scalars(entry, name=name), step, runs)
    with ImageLog(writer) as log:  # PNGs encoded on a second thread, as for the dissection
        for concept, numbers in entry["concepts"].items():
            if numbers is None:
                continue
            chart = removal_chart(concept, numbers, entry["layer"])
            log.add(f"{name}/{concept}/removal_curve", chart.pixels, step)
        for concept, shots in images.items():
            numbers = entry["concepts"].get(concept)
            units = numbers["ace"].get("units") if numbers else None
            grid = intervention_grid(shots, units=units)
            log.add(f"{name}/{concept}/images", image_pixels(grid), step)
