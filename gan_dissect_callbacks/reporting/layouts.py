"""Scalar tags and runs of a dissection, the custom-scalars layout grouping them, label stability.

Example:
    >>> label_stability(["sky", None, "tree"], ["sky", "tree", "grass"])
    0.5
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "ACROSS_LAYERS",
    "category_run",
    "custom_scalars_layout",
    "label_stability",
    "layer_run",
    "layer_scalar_tags",
]

# ------------------------------------------------------------------------------ scalars


def _check_names(argument: str, names: Sequence[str], *, allow_empty: bool) -> None:
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"Expected argument `{argument}` to be a sequence of non-empty strings, but got "
            f"{names!r}."
        )
    if not names and not allow_empty:
        raise ValueError(f"Expected at least one name in `{argument}`, but got none.")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"Expected unique names in `{argument}`, but got repeated {repeated}.")


def layer_scalar_tags(
    layer: str, categories: Sequence[str], *, prefix: str = "dissection"
) -> dict[str, str]:
    """The scalar tags a dissection of ``layer`` is logged under, keyed by what they measure.

    ``"interpretable_units/{category}"`` for every category, then
    ``"interpretable_units/total"``, ``"distinct_concepts"``, ``"label_stability"`` and
    ``"mean_best_iou"``; each tag is ``"{prefix}/{layer}/{key}"``.

    Args:
        layer: the layer name, e.g. ``"generator.layer3"``.
        categories: the concept categories (``"total"`` is reserved).
        prefix: the analysis's name, e.g. ``"dissection_ema"`` for a second dissection.

    Raises:
        ValueError: if a name is empty or repeated, or a category is called ``"total"``.

    Example:
        >>> tags = layer_scalar_tags("layer3", ["object", "part"])
        >>> tags["interpretable_units/part"], tags["label_stability"]
        ('dissection/layer3/interpretable_units/part', 'dissection/layer3/label_stability')
        >>> list(tags)
        ['interpretable_units/object', 'interpretable_units/part', 'interpretable_units/total', 'distinct_concepts', 'label_stability', 'mean_best_iou']
        >>> layer_scalar_tags("layer3", [], prefix="dissection_ema")["distinct_concepts"]
        'dissection_ema/layer3/distinct_concepts'
    """  # noqa: E501
    _check_names("prefix", [prefix], allow_empty=False)
    _check_names("layers", [layer], allow_empty=False)
    _check_names("categories", categories, allow_empty=True)
    if "total" in categories:
        raise ValueError(
            "Expected no category called 'total' in `categories` (the tag of the total count), "
            f"but got {list(categories)}."
        )
    keys = [f"interpretable_units/{c}" for c in categories]
    keys += ["interpretable_units/total", "distinct_concepts", "label_stability", "mean_best_iou"]
    return {key: f"{prefix}/{layer}/{key}" for key in keys}


def _exactly(tag: str) -> str:
    # Custom-scalars charts match tags by regular expression; anchor and escape so that
    # "layer1" does not also pick "layer10" and a "." in a layer name is literal.
    return f"^{re.escape(tag)}$"


def layer_run(layer: str, *, prefix: str = "dissection") -> str:
    """The TensorBoard run (a folder beside the main run) of one layer's curves.

    Example:
        >>> layer_run("generator.layer3")
        'dissection/generator.layer3'
    """
    return f"{prefix}/{layer}"


def category_run(category: str, *, prefix: str = "dissection") -> str:
    """The TensorBoard run of one category's counts (``"total"`` too), beside the main run.

    Example:
        >>> category_run("object", prefix="dissection_ema")
        'dissection_ema/categories/object'
    """
    return f"{prefix}/categories/{category}"


#: The tags every layer's run holds (one line per layer in each chart), after ``{prefix}/``.
ACROSS_LAYERS = {
    "interpretable units (all layers)": "interpretable_units/total",
    "distinct concepts (all layers)": "distinct_concepts",
    "label stability (all layers)": "label_stability",
    "mean best IoU (all layers)": "mean_best_iou",
}


def custom_scalars_layout(
    layers: Sequence[str], categories: Sequence[str], *, prefix: str = "dissection"
) -> dict[str, dict[str, list[Any]]]:
    """A TensorBoard custom-scalars layout: one coloured line per layer or category in a chart.

    The format is the one ``SummaryWriter.add_custom_scalars`` expects:
    ``{section: {chart: ["Multiline", [tag regexes]]}}``. TensorBoard colours lines by *run*, so
    the combined charts read tags written once per run (see
    :func:`~gan_dissect_callbacks.reporting.dissection.run_scalars`): section
    ``"{prefix} (all layers)"`` holds the charts of :data:`ACROSS_LAYERS`, each matching the one
    tag ``{prefix}/{key}`` that every layer's run (:func:`layer_run`) holds; then a section
    ``"{prefix}: {layer}"`` per layer holds ``"interpretable units by category"``, matching
    ``{prefix}/{layer}/interpretable_units``, held by every category's run
    (:func:`category_run`). Tags are anchored, escaped regular expressions (the plugin matches
    tags by regex).

    Args:
        layers: the dissected layer names.
        categories: the concept categories.
        prefix: the analysis's name (``"dissection"`` unless several dissections are logged).

    Raises:
        ValueError: if a name is empty or repeated, ``layers`` is empty, or a category is called
            ``"total"``.

    Example:
        >>> layout = custom_scalars_layout(["layer3"], ["object"])
        >>> list(layout)
        ['dissection (all layers)', 'dissection: layer3']
        >>> layout["dissection (all layers)"]["mean best IoU (all layers)"]
        ['Multiline', ['^dissection/mean_best_iou$']]
        >>> layout["dissection: layer3"]["interpretable units by category"]
        ['Multiline', ['^dissection/layer3/interpretable_units$']]
    """
    _check_names("layers", layers, allow_empty=False)
    for layer in layers:
        layer_scalar_tags(layer, categories, prefix=prefix)  # the names' checks
    layout: dict[str, dict[str, list[Any]]] = {
        f"{prefix} (all layers)": {
            chart: ["Multiline", [_exactly(f"{prefix}/{key}")]]
            for chart, key in ACROSS_LAYERS.items()
        }
    }
    for layer in layers:
        layout[f"{prefix}: {layer}"] = {
            "interpretable units by category": [
                "Multiline",
                [_exactly(f"{prefix}/{layer}/interpretable_units")],
            ]
        }
    return layout


# ------------------------------------------------------------------------------ stability


def label_stability(previous: Sequence[str | None], current: Sequence[str | None]) -> float | None:
    """Share of the previously interpretable units that keep their concept.

    With ``L`` the units labelled (interpretable, label not ``None``) in the previous dissection,
    the stability is ``|{u ∈ L : current[u] == previous[u]}| / |L|``: a unit that changes its
    concept or stops being interpretable counts against it; a unit that only becomes
    interpretable now does not count (it had no concept to keep). It is ``None`` when the
    previous dissection labelled no unit (nothing to keep), so curves show a gap, not a fake 0
    or 1. Inputs are per-unit labels as given by
    :meth:`~gan_dissect_callbacks.engines.dissection.DissectionReport.labels`.

    Args:
        previous: per unit, its concept in the earlier dissection, or ``None``.
        current: per unit, its concept now, or ``None``.

    Returns:
        A float in ``[0, 1]``, or ``None``.

    Raises:
        ValueError: if the two lists have different lengths (not the same layer).

    Example:
        >>> label_stability(["sky", "tree", None, "door"], ["sky", "house", "sun", None])
        0.3333333333333333
        >>> label_stability([None, None], ["sky", None]) is None
        True
    """
    if len(previous) != len(current):
        raise ValueError(
            "Expected `previous` and `current` to label the same units, but got "
            f"{len(previous)} and {len(current)} labels."
        )
    labelled = [(p, c) for p, c in zip(previous, current, strict=True) if p is not None]
    if not labelled:
        return None
    return sum(p == c for p, c in labelled) / len(labelled)
