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
  (:func:`intervention_grid`), written by :func:`log_intervention`.

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
from matplotlib.figure import Figure
from torch import Tensor

from gan_dissect_callbacks.reporting.charts import figure_to_image
from gan_dissect_callbacks.reporting.images import enlarge, image_grid

__all__ = [
    "REPORT_FORMAT",
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


def removal_chart(concept: str, numbers: Mapping[str, Any], layer: str) -> Figure:
    """The removal curves of one concept: the IoU ranking, random units, the α ranking.

    Each curve is drawn through the unit counts it was evaluated at (its ``points``).

    Example:
        >>> curve = {"removed": [0.5, 0.9], "random_mean": [0.1, 0.2]}
        >>> fig = removal_chart("tree", {"removal": curve}, "generator.layer3")
        >>> [line.get_label() for line in fig.axes[0].get_lines()]
        ['top units (IoU)', 'random']
    """
    fig = Figure(figsize=(4.0, 3.0), dpi=80)
    ax = fig.add_subplot()
    curve = numbers["removal"]
    ns = _chart_points(curve)
    ax.plot(ns, [0.0, *curve["removed"]], marker="o", label="top units (IoU)")
    if "alpha_removal" in numbers:
        alpha_curve = numbers["alpha_removal"]
        ax.plot(
            _chart_points(alpha_curve),
            [0.0, *alpha_curve["removed"]],
            marker="s",
            label="top units (α)",
        )
    if curve["random_mean"]:
        ax.plot(ns, [0.0, *curve["random_mean"]], linestyle="--", color="grey", label="random")
    ax.set_xlabel("units ablated")
    ax.set_ylabel(f"share of {concept} pixels removed")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{layer}: {concept}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def intervention_grid(shots: Mapping[str, Tensor]) -> Tensor:
    """One image of the samples as drawn, ablated and inserted: a row each, ``[3, H', W']``.

    Samples under 64 px are enlarged (nearest): they are unreadable at native size in
    TensorBoard.

    Args:
        shots: ``{"original", "ablated", "inserted"}`` images ``[N, C, H, W]`` in ``[-1, 1]``.

    Example:
        >>> import torch
        >>> shots = {k: torch.zeros(2, 3, 32, 32) for k in ("original", "ablated", "inserted")}
        >>> tuple(intervention_grid(shots).shape)  # 3 rows, 2 columns of 64 px, 2 px padding
        (3, 200, 134)
    """
    rows = torch.cat([shots["original"], shots["ablated"], shots["inserted"]])
    return image_grid(enlarge(rows, MIN_IMAGE_SIDE), nrow=int(shots["original"].shape[0]))


def log_intervention(
    writer: Any,
    entry: Mapping[str, Any],
    images: Mapping[str, Mapping[str, Tensor]],
    *,
    name: str = "intervention",
) -> None:
    """Write one entry's charts and image grids to a TensorBoard ``SummaryWriter``.

    The scalars go through
    :meth:`~gan_dissect_callbacks.reporting.writing.ReportOutput.log_scalars` with
    :func:`intervention_scalars`, so that every logger gets them.

    Args:
        writer: the ``SummaryWriter`` (anything with ``add_image``).
        entry: the entry, at step ``entry["step"]``.
        images: per concept, the pictures of
            :func:`~gan_dissect_callbacks.engines.intervention.intervention_images`.
        name: the analysis's name, the tags' prefix.
    """
    step = int(entry["step"])
    for concept, numbers in entry["concepts"].items():
        if numbers is None:
            continue
        chart = figure_to_image(removal_chart(concept, numbers, entry["layer"]))
        writer.add_image(f"{name}/{concept}/removal_curve", chart, global_step=step)
    for concept, shots in images.items():
        writer.add_image(f"{name}/{concept}/images", intervention_grid(shots), global_step=step)
