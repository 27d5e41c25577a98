"""One layer's top units over training: their IoU and label at every dissection, read at a glance.

:func:`unit_timeline` picks the units and reads their numbers from a dissection callback's
``history`` (the :func:`~gan_dissect_callbacks.reporting.dissection.summarise` entries, which
live in the checkpoint, so the view survives a resume); :func:`timeline_image` draws it as a
heatmap table (rows units, columns steps, colour IoU, text the label) and
:func:`timeline_markdown` writes it as a table for TensorBoard's text tab.

Example:
    >>> history = [
    ...     {"step": 0, "layers": {"l3": {"labels": [None, None], "ious": [0.01, 0.02]}}},
    ...     {"step": 500, "layers": {"l3": {"labels": ["sky", None], "ious": [0.3, 0.03]}}},
    ... ]
    >>> print(timeline_markdown(unit_timeline(history, "l3")))
    | unit | step 0 | step 500 |
    |---:|:---|:---|
    | 0 | - 0.010 | sky 0.300 |
    | 1 | - 0.020 | - 0.030 |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from gan_dissect_callbacks.reporting.images import (
    DISPLAY_WIDTH,
    MIN_LABEL_PX,
    from_pixels,
    label_cap_height,
    label_font,
    line_metrics,
    text_width,
)

__all__ = [
    "UnitTimeline",
    "timeline_image",
    "timeline_markdown",
    "timeline_pixels",
    "unit_timeline",
]

#: Cell text of a unit that is not interpretable at a step.
NO_LABEL = "-"


@dataclass(frozen=True)
class UnitTimeline:
    """Some units of one layer at each dissection so far.

    Attributes:
        layer: the layer.
        steps: the dissections' steps, oldest first.
        units: the units shown, best latest IoU first.
        ious: ``ious[i][j]``: unit ``units[i]``'s best IoU at ``steps[j]`` (``None``: unknown).
        labels: ``labels[i][j]``: its concept there, ``None`` when not interpretable.
    """

    layer: str
    steps: list[int]
    units: list[int]
    ious: list[list[float | None]]
    labels: list[list[str | None]]


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def unit_timeline(
    history: Sequence[Mapping[str, Any]], layer: str, *, top_n: int = 12, max_steps: int = 8
) -> UnitTimeline:
    """The ``top_n`` units of ``layer`` by their latest best IoU, at the last ``max_steps`` steps.

    Args:
        history: dissection summaries, oldest first (entries without ``layer`` are skipped;
            entries of older versions without per-unit IoUs give ``None`` IoUs).
        layer: the layer.
        top_n: units shown (≥ 1); ties by unit index.
        max_steps: the most recent dissections shown (≥ 1).

    Raises:
        ValueError: if ``top_n`` or ``max_steps`` is not a positive integer, or no entry of
            ``history`` holds ``layer``.
    """
    for argument, value in (("top_n", top_n), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"Expected argument `{argument}` to be an integer ≥ 1, but got {value!r}."
            )
    entries = [e for e in history if layer in e["layers"]][-max_steps:]
    if not entries:
        raise ValueError(
            f"Expected a dissection of layer {layer!r} in `history`, but its entries hold "
            f"{sorted({name for e in history for name in e['layers']})}."
        )
    latest = entries[-1]["layers"][layer]
    num_units = len(latest["labels"])
    latest_iou = [_number(v) for v in latest.get("ious") or [None] * num_units]
    order = sorted(
        range(num_units),
        key=lambda u: (latest_iou[u] is None, -(latest_iou[u] or 0.0), u),
    )[:top_n]
    ious, labels = [], []
    for unit in order:
        row_iou, row_label = [], []
        for entry in entries:
            numbers = entry["layers"][layer]
            unit_ious = numbers.get("ious")
            row_iou.append(_number(unit_ious[unit]) if unit_ious else None)
            row_label.append(numbers["labels"][unit])
        ious.append(row_iou)
        labels.append(row_label)
    steps = [int(e["step"] or 0) for e in entries]
    return UnitTimeline(layer, steps, order, ious, labels)


def _cell(label: str | None, iou: float | None) -> str:
    text = NO_LABEL if label is None else " ".join(label.replace("|", "\\|").split())
    return text if iou is None else f"{text} {iou:.3f}"


def timeline_markdown(timeline: UnitTimeline) -> str:
    """The timeline as a markdown table: a row per unit, a column per step, ``"label IoU"``."""
    lines = [
        "| unit | " + " | ".join(f"step {s}" for s in timeline.steps) + " |",
        "|---:|" + ":---|" * len(timeline.steps),
    ]
    for unit, labels, ious in zip(timeline.units, timeline.labels, timeline.ious, strict=True):
        cells = " | ".join(_cell(lab, iou) for lab, iou in zip(labels, ious, strict=True))
        lines.append(f"| {unit} | {cells} |")
    return "\n".join(lines)


def _text_colour(rgb: tuple[float, float, float]) -> str:
    # Dark text on the bright end of the colour map, light text on the dark end.
    return "black" if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.5 else "white"


def timeline_image(timeline: UnitTimeline) -> Tensor:
    """:func:`timeline_pixels` as a ``[3, H, W]`` float image in ``[0, 1]``.

    Example:
        >>> t = UnitTimeline("l3", [0, 500], [4], [[0.0, 0.3]], [[None, "sky"]])
        >>> image = timeline_image(t)
        >>> image.shape[0], bool(image.min() >= 0 and image.max() <= 1)
        (3, True)
    """
    return from_pixels(timeline_pixels(timeline))


def timeline_pixels(timeline: UnitTimeline) -> np.ndarray:
    """The timeline as a heatmap table: rows units, columns steps, colour IoU, text the label.

    Each cell is coloured by the unit's best IoU at that step (viridis, dark 0 to yellow at the
    table's largest IoU; grey when unknown) and reads its concept, :data:`NO_LABEL` when it is
    not interpretable. A header row gives the steps, the first column the units, the last line
    the colour scale. So that TensorBoard's card shows the table at actual size, with 10-px
    capitals (:data:`~gan_dissect_callbacks.reporting.images.MIN_LABEL_PX`), the steps wrap
    into blocks stacked top to bottom (each with its own header row), as many steps a block as
    fit :data:`~gan_dissect_callbacks.reporting.images.DISPLAY_WIDTH` pixels. Should one step's
    column not fit (very long concept names), the letters grow by
    :func:`~gan_dissect_callbacks.reporting.images.label_cap_height` of the table's width, up
    to twice their least size.
    Drawn with Pillow, no figure.

    Returns:
        ``[H, W, 3]`` uint8 pixels.

    Example:
        >>> t = UnitTimeline("l3", [0, 500], [4], [[0.0, 0.3]], [[None, "sky"]])
        >>> pixels = timeline_pixels(t)
        >>> pixels.ndim, pixels.shape[2], pixels.dtype.name
        (3, 3, 'uint8')
    """
    from matplotlib import colormaps

    pad = 6
    cells = [[NO_LABEL if lab is None else lab for lab in row] for row in timeline.labels]
    heads = [f"#{u}" for u in timeline.units]
    steps = [str(s) for s in timeline.steps]
    known = [v for row in timeline.ious for v in row if v is not None]
    top = max(known) if known else 1.0
    title = f"{timeline.layer}: top units by latest IoU"
    footer = f"colour: best IoU, dark 0 to yellow {top:.2f}"

    def layout(cap: int) -> tuple[Any, int, int, int, int]:
        font = label_font(cap)
        first = max(text_width(t, font) for t in [*heads, "unit"]) + 2 * pad
        cell = [*steps, *(c for r in cells for c in r)]
        column = max(max(text_width(t, font) for t in cell) + 2 * pad, 48 * cap // MIN_LABEL_PX)
        per_block = max(1, min(len(steps), (DISPLAY_WIDTH - 2 * pad - first) // column))
        width = max(first + column * per_block, text_width(title, font), text_width(footer, font))
        return font, first, column, per_block, width + 2 * pad

    cap = MIN_LABEL_PX
    font, first, column, per_block, width = layout(cap)
    # Only a table wider than the card grows its letters; a few steps settle the size. A column
    # of text alone over 35 capitals wide grows with its letters and never settles, so at most
    # twice the least size.
    for _ in range(8):
        need = min(label_cap_height(width), 2 * MIN_LABEL_PX)
        if need <= cap:
            break
        cap = need
        font, first, column, per_block, width = layout(cap)
    ascent, descent = line_metrics(font)
    row_height = descent - ascent + 2 * pad
    blocks = [range(j, min(j + per_block, len(steps))) for j in range(0, len(steps), per_block)]
    height = row_height * (2 + len(blocks) * (len(heads) + 1))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    def write(x: int, y: int, text: str, fill: str = "black") -> None:
        draw.text((x, y + pad - ascent), text, fill=fill, font=font)

    write(pad, 0, title)
    viridis = colormaps["viridis"]
    for b, block in enumerate(blocks):
        y0 = row_height * (1 + b * (len(heads) + 1))
        write(pad, y0, "unit")
        for k, j in enumerate(block):
            write(pad + first + k * column + pad, y0, steps[j])
        for i, head in enumerate(heads):
            y = y0 + row_height * (i + 1)
            write(pad + pad, y, head)
            for k, j in enumerate(block):
                x = pad + first + k * column
                value = timeline.ious[i][j]
                rgb = (0.8, 0.8, 0.8) if value is None else viridis(value / max(top, 1e-12))[:3]
                fill = tuple(round(255 * c) for c in rgb)
                draw.rectangle([x, y, x + column - 2, y + row_height - 2], fill=fill)
                write(x + pad, y, cells[i][j], _text_colour(rgb))
    write(pad, height - row_height, footer)
    return np.asarray(canvas, dtype=np.uint8)
