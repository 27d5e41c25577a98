"""Markdown tables for TensorBoard's text plugin: a layer's interpretable units."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import LayerReport

__all__ = ["units_markdown"]

# ------------------------------------------------------------------------------ text


def _escape_cell(text: str) -> str:
    """Make ``text`` safe inside a markdown table cell."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def units_markdown(
    layer: LayerReport, *, max_rows: int = 50, categories: Sequence[str] = ()
) -> str:
    """The interpretable units of a layer as a markdown table, best IoU first.

    Columns: unit, concept, category, IoU, threshold, IQR. At most ``max_rows`` rows are listed
    (a line says how many were left out); a last line gives the counts by category. ``|`` in
    names is escaped so the table keeps its columns in TensorBoard's text plugin.

    Args:
        layer: the layer's dissection.
        max_rows: the most units to list (≥ 1).
        categories: categories to list first in the count line, zero counts included (e.g. the
            vocabulary's ``categories``); others follow as they occur.

    Returns:
        Markdown text for ``SummaryWriter.add_text``.

    Raises:
        ValueError: if ``max_rows`` is not a positive integer.

    Example:
        >>> from gan_dissect_callbacks.engines.dissection import LayerReport, UnitReport
        >>> units = [UnitReport(0, "sky", "object", 0.31, 1.5, 0.12, True),
        ...          UnitReport(1, "door", "part", 0.01, 0.7, 0.0, False),
        ...          UnitReport(2, "window", "part", 0.42, 2.25, 0.2, True)]
        >>> print(units_markdown(LayerReport("layer3", 3, units, []),
        ...                      categories=("object", "part", "material")))
        | unit | concept | category | IoU | threshold | IQR |
        |---:|:---|:---|---:|---:|---:|
        | 2 | window | part | 0.420 | 2.25 | 0.200 |
        | 0 | sky | object | 0.310 | 1.5 | 0.120 |
        <BLANKLINE>
        **layer3**: 2 of 3 units interpretable: 1 object, 1 part, 0 material.
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(
            f"Expected argument `max_rows` to be an integer ≥ 1, but got {max_rows!r}."
        )
    units = layer.interpretable_units
    counts = layer.counts_by_category(categories)
    by_category = ", ".join(f"{n} {_escape_cell(c)}" for c, n in counts.items())
    summary = f"**{_escape_cell(layer.layer)}**: {len(units)} of {layer.num_units} units " + (
        f"interpretable: {by_category}." if by_category else "interpretable."
    )
    if not units:
        return f"No interpretable units.\n\n{summary}"
    lines = [
        "| unit | concept | category | IoU | threshold | IQR |",
        "|---:|:---|:---|---:|---:|---:|",
    ]
    lines += [
        f"| {u.unit} | {_escape_cell(u.concept)} | {_escape_cell(u.category)} | {u.iou:.3f} "
        f"| {u.threshold:.4g} | {u.iqr:.3f} |"
        for u in units[:max_rows]
    ]
    lines.append("")
    if len(units) > max_rows:
        rest = len(units) - max_rows
        lines += [f"…and {rest} more interpretable unit{'' if rest == 1 else 's'}.", ""]
    lines.append(summary)
    return "\n".join(lines)
