"""Charts for TensorBoard, drawn with Pillow: the paper's unit-class distribution, line charts.

Pure rendering, a few milliseconds a chart: :func:`category_chart` draws a layer's unit
classes, :func:`line_chart` lines through points (the intervention's removal curves). Each
returns the chart's pixels and where it put every bar, point and text, which is what the
legibility tests check. They replaced matplotlib figures that took 0.04-0.1 s each, several
times per analysis (most of that in creating and drawing tick labels).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from gan_dissect_callbacks.reporting.images import (
    from_pixels,
    line_metrics,
    sized_font,
    text_width,
)

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import LayerReport
    from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

__all__ = [
    "Bar",
    "Box",
    "CategoryChart",
    "LineChart",
    "Series",
    "category_chart",
    "line_chart",
]

# ------------------------------------------------------------------------ the unit classes


@dataclass(frozen=True)
class Box:
    """A rectangle of a chart in pixels: ``x0 ≤ x < x1``, ``y0 ≤ y < y1``, ``y`` downwards."""

    x0: int
    y0: int
    x1: int
    y1: int

    def inside(self, other: Box) -> bool:
        """Whether this box lies within ``other``."""
        return (
            other.x0 <= self.x0
            and self.x1 <= other.x1
            and other.y0 <= self.y0
            and self.y1 <= other.y1
        )

    def overlaps(self, other: Box) -> bool:
        """Whether the two boxes share any pixel."""
        return (
            self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1
        )


@dataclass(frozen=True)
class Bar:
    """One bar of a :class:`CategoryChart`: a concept, its interpretable units, its category."""

    concept: str
    units: int
    category: str
    colour: tuple[int, int, int]
    box: Box


@dataclass(frozen=True)
class _Drawn:
    """A drawn chart: ``[H, W, 3]`` uint8 pixels, read-only."""

    pixels: np.ndarray

    def image(self) -> Tensor:
        """The chart as a ``[3, H, W]`` float image in ``[0, 1]``."""
        return from_pixels(self.pixels)


@dataclass(frozen=True)
class CategoryChart(_Drawn):
    """The paper's unit-class distribution chart of one layer, drawn.

    Attributes:
        pixels: ``[H, W, 3]`` uint8, read-only (one chart serves every caller of its data).
        title: the layer's summary line, at the top.
        bars: one per concept, left to right.
        legend: ``(text, colour)`` per category with units, in order.
        plot: the framed plot area the bars stand in.
        texts: ``(kind, text, box)`` of every text drawn: ``"title"``, ``"legend"``,
            ``"x tick"`` (the concept names, upright below the bars), ``"y tick"``,
            ``"y label"`` and ``"note"`` (the message of a chart without bars).
    """

    title: str
    bars: tuple[Bar, ...]
    legend: tuple[tuple[str, tuple[int, int, int]], ...]
    plot: Box
    texts: tuple[tuple[str, str, Box], ...]


def category_chart(layer: LayerReport, vocabulary: ConceptVocabulary) -> CategoryChart:
    """The paper's unit-class distribution chart of one layer, drawn with Pillow.

    One bar per concept that labels at least one interpretable unit, its height the number of
    such units. Bars are grouped by category (the vocabulary's order, then categories that only
    the report knows), sorted by count within a category (ties by name), and coloured by
    category; the legend reads ``"object: 3 units"``; the title is the layer's summary line
    (:meth:`~gan_dissect_callbacks.engines.dissection.LayerReport.summary`). The chart is
    widened until the legend and the title fit inside it, whatever the categories' names. A
    layer without interpretable units gives a chart that says "no interpretable units".

    Drawing takes a few milliseconds, and the last 16 distinct charts are kept (the same
    object is returned for the same data): a layer's unit classes often stay the same from one
    dissection to the next, once labels settle.

    Example:
        >>> from gan_dissect_callbacks.engines.dissection import LayerReport, UnitReport
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary.from_pairs([("sky", "object"), ("window", "part")])
        >>> units = [UnitReport(u, c, vocab.category_of(c), 0.2, 1.0, 0.1, True)
        ...          for u, c in enumerate(["window", "sky", "window"])]
        >>> chart = category_chart(LayerReport("layer3", 3, units, []), vocab)
        >>> [(bar.concept, bar.units) for bar in chart.bars]
        [('sky', 1), ('window', 2)]
        >>> [text for text, _ in chart.legend], chart.pixels.shape
        (['object: 1 unit', 'part: 2 units'], (320, 400, 3))
        >>> chart is category_chart(LayerReport("layer3", 3, units, []), vocab)
        True
    """
    return _draw_category_chart(*_chart_data(layer, vocabulary))


#: What a category chart shows: its title, ``(category, units)`` in legend order and
#: ``(concept, units, category)`` per bar.
_ChartData = tuple[str, tuple[tuple[str, int], ...], tuple[tuple[str, int, str], ...]]


def _chart_data(layer: LayerReport, vocabulary: ConceptVocabulary) -> _ChartData:
    counts = layer.counts_by_category(vocabulary.categories)
    by_concept = layer.counts_by_concept()
    category_of = {u.concept: u.category for u in layer.interpretable_units}
    bars = tuple(
        (concept, n, category)
        for category in counts
        for concept, n in sorted(
            ((c, n) for c, n in by_concept.items() if category_of[c] == category),
            key=lambda cn: (-cn[1], cn[0]),
        )
    )
    return layer.summary(vocabulary.categories), tuple(counts.items()), bars


#: Sizes of the chart in pixels: its usual height, its least width, the width it takes per bar,
#: the margin around everything, the ticks' length, the gap between texts and what they label,
#: and the least height of the plot.
_HEIGHT, _MIN_WIDTH, _PER_BAR, _MARGIN, _TICK, _GAP, _MIN_PLOT = 320, 400, 30, 5, 4, 3, 120
#: Font sizes (pixels) of the title and of every other text: a pixel above the 9 and 8 points
#: at 100 dpi of the matplotlib figure this chart replaced.
_TITLE_SIZE, _TEXT_SIZE = 14, 12

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=16)
def _draw_category_chart(
    title: str,
    category_counts: tuple[tuple[str, int], ...],
    bars: tuple[tuple[str, int, str], ...],
) -> CategoryChart:
    colours = {cat: _category_colour(i) for i, (cat, _) in enumerate(category_counts)}
    title_font, font = sized_font(_TITLE_SIZE), sized_font(_TEXT_SIZE)
    line = _line_height(font)
    legend = tuple(
        (f"{cat}: {n} unit{'' if n == 1 else 's'}", colours[cat])
        for cat, n in category_counts
        if n > 0
    )
    swatch = (2 * _TEXT_SIZE, max(1, round(0.7 * _TEXT_SIZE)))
    entries = [swatch[0] + 2 * _GAP + text_width(text, font) for text, _ in legend]
    column_gap = 2 * _TEXT_SIZE

    def legend_layout(columns: int) -> tuple[list[int], int]:
        widths = [max(entries[i::columns]) for i in range(min(columns, len(entries)))]
        return widths, sum(widths) + column_gap * max(0, len(widths) - 1)

    highest = max((n for _, n, _ in bars), default=0)
    width = max(_MIN_WIDTH, 150 + _PER_BAR * len(bars))
    # Tick labels are at most as wide as the highest count (the font's digits are as wide).
    left = _MARGIN + (_y_room([str(highest)], font) if bars else 0)
    # Above the bars, never over them: as many columns (up to 4) as the chart's width holds.
    room = width - left - 3 * _MARGIN
    columns = next((c for c in range(min(4, len(legend)), 1, -1) if legend_layout(c)[1] <= room), 1)
    column_widths, legend_width = legend_layout(columns)
    legend_rows = -(-len(legend) // columns)

    names = max((text_width(name, font) for name, _, _ in bars), default=0)
    names_room = names + _TICK + _GAP if bars else 0
    legend_top = _MARGIN + _line_height(title_font) + _GAP
    top = legend_top + legend_rows * (line + _GAP) + _MARGIN
    # Taller than usual when long names or many categories would leave the bars no room.
    height = max(_HEIGHT, top + _MIN_PLOT + names_room + _MARGIN)
    bottom = height - _MARGIN - names_room
    # As many tick labels as fit with a line between them (matplotlib's at most 9 are denser).
    ticks = _integer_ticks(highest, most=max(2, (bottom - top) // (2 * line))) if bars else []
    needed = max(left + legend_width + 3 * _MARGIN, text_width(title, title_font) + 2 * _MARGIN)
    width = max(width, -(-needed // 25) * 25)  # widened in steps of 25 px
    title_box = _centred(width // 2, _MARGIN, title, title_font)
    plot = Box(left, top, width - 2 * _MARGIN, bottom)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    texts = [("title", title, _text(draw, title_box, title, title_font))]
    for i, (text, colour) in enumerate(legend):
        row, column = divmod(i, columns)
        x = plot.x0 + sum(column_widths[:column]) + column_gap * column
        y = legend_top + row * (line + _GAP)
        middle = y + line // 2
        draw.rectangle(
            [x, middle - swatch[1] // 2, x + swatch[0] - 1, middle + swatch[1] // 2], colour
        )
        box = Box(x + swatch[0] + 2 * _GAP, y, x + entries[i], y + line)
        texts.append(("legend", text, _text(draw, box, text, font)))

    drawn: list[Bar] = []
    if not bars:
        note = "no interpretable units"
        box = _centred((plot.x0 + plot.x1) // 2, (plot.y0 + plot.y1 - line) // 2, note, font)
        texts.append(("note", note, _text(draw, box, note, font)))
    else:
        # Room for at least 6 bars, so one or two bars stay slim, centred.
        spare = max(0, 6 - len(bars)) / 2
        low, high = -0.6 - spare, len(bars) - 0.4 + spare
        ceiling = 1.05 * highest  # a margin of 5% above the highest bar

        def x_of(v: float) -> int:
            return round(plot.x0 + (v - low) / (high - low) * (plot.x1 - plot.x0))

        def y_of(v: float) -> int:
            return round(plot.y1 - v / ceiling * (plot.y1 - plot.y0))

        for i, (concept, n, category) in enumerate(bars):
            box = Box(x_of(i - 0.4), y_of(n), x_of(i + 0.4), plot.y1)
            draw.rectangle([box.x0, box.y0, box.x1 - 1, box.y1 - 1], colours[category])
            drawn.append(Bar(concept, n, category, colours[category], box))
            centre = x_of(i)
            draw.line([centre, plot.y1, centre, plot.y1 + _TICK], "black")
            name_box = _upright(image, concept, font, centre, plot.y1 + _TICK + _GAP)
            texts.append(("x tick", concept, name_box))
        labels = [str(t) for t in ticks]
        texts += _y_axis(image, draw, plot, ticks, labels, y_of, font, "interpretable units")
    draw.rectangle([plot.x0, plot.y0, plot.x1 - 1, plot.y1 - 1], outline="black")
    pixels = np.asarray(image, dtype=np.uint8)
    pixels.flags.writeable = False  # shared by every caller of the same data
    return CategoryChart(pixels, title, tuple(drawn), legend, plot, tuple(texts))


# ------------------------------------------------------------------------------ line charts


@dataclass(frozen=True)
class Series:
    """One line of a :class:`LineChart`: its points, legend label and style."""

    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    colour: tuple[int, int, int]
    #: ``"o"`` (dots), ``"s"`` (squares) or ``""`` (none) at every point.
    marker: str = ""
    dashed: bool = False


@dataclass(frozen=True)
class LineChart(_Drawn):
    """A drawn line chart: its pixels, and where every point and text is.

    Attributes:
        pixels: ``[H, W, 3]`` uint8, read-only.
        series: the lines, in legend order.
        points: per series, the pixel ``(x, y)`` of each of its points.
        plot: the framed plot area.
        texts: ``(kind, text, box)`` of every text drawn: ``"title"``, ``"x tick"``,
            ``"y tick"``, ``"x label"``, ``"y label"`` and ``"legend"`` (inside the plot, in its
            lower right corner, on white).
    """

    series: tuple[Series, ...]
    points: tuple[tuple[tuple[int, int], ...], ...]
    plot: Box
    texts: tuple[tuple[str, str, Box], ...]


#: Line charts: their size, and their fonts' sizes (title, other texts, legend) in pixels.
_LINE_CHART_SIZE, _LINE_FONT_SIZES = (320, 240), (12, 11, 10)


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_ticks: Sequence[float],
) -> LineChart:
    """Lines through their points, drawn with Pillow: whole-number x ticks, given y ticks.

    The x axis spans the points with a margin of 5% on each side; the y axis spans ``y_ticks``
    with the same margin, and a value beyond it is drawn at the plot's edge. The legend sits in
    the plot's lower right corner.

    Raises:
        ValueError: for fewer than two ``y_ticks``, or a series with NaN/Inf values or with
            more x than y values (or fewer).

    Example:
        >>> line = Series("top units", (0, 1, 2), (0.0, 0.5, 0.9), (31, 119, 180), marker="o")
        >>> chart = line_chart([line], title="tree", x_label="units ablated",
        ...                    y_label="share removed", y_ticks=[0.0, 0.5, 1.0])
        >>> chart.pixels.shape, [kind for kind, _, _ in chart.texts].count("x tick")
        ((240, 320, 3), 3)
    """
    if len(y_ticks) < 2 or not all(math.isfinite(v) for v in y_ticks):
        raise ValueError(
            f"Expected argument `y_ticks` to hold at least two finite values, but got {y_ticks!r}."
        )
    for one in series:
        if len(one.xs) != len(one.ys) or not all(map(math.isfinite, (*one.xs, *one.ys))):
            raise ValueError(
                f"Expected the series {one.label!r} to have as many finite x as y values, but "
                f"got xs={one.xs!r}, ys={one.ys!r}."
            )
    width, height = _LINE_CHART_SIZE
    title_font, font, legend_font = (sized_font(size) for size in _LINE_FONT_SIZES)
    line = _line_height(font)
    xs = [x for s in series for x in s.xs] or [0.0, 1.0]
    x_low, x_high = _with_margin(min(xs), max(xs))
    y_low, y_high = _with_margin(min(y_ticks), max(y_ticks))
    y_texts = [f"{v:.1f}" for v in y_ticks]
    title_box = _centred(width // 2, _MARGIN, title, title_font)
    top = title_box.y1 + 2 * _GAP
    bottom = height - _MARGIN - line - _GAP - line - _TICK - _GAP
    x_ticks = [t for t in _integer_ticks(math.floor(x_high), most=8) if x_low <= t <= x_high]
    last = text_width(str(x_ticks[-1]), font) // 2 if x_ticks else 0
    plot = Box(_MARGIN + _y_room(y_texts, font), top, width - _MARGIN - last, bottom)

    def x_of(v: float) -> int:
        return round(plot.x0 + (v - x_low) / (x_high - x_low) * (plot.x1 - plot.x0))

    def y_of(v: float) -> int:
        v = min(max(v, y_low), y_high)  # values beyond the ticks' span at the plot's edge
        return round(plot.y1 - (v - y_low) / (y_high - y_low) * (plot.y1 - plot.y0))

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    texts = [("title", title, _text(draw, title_box, title, title_font))]
    texts += _y_axis(image, draw, plot, list(y_ticks), y_texts, y_of, font, y_label)
    for value in x_ticks:
        x = x_of(value)
        draw.line([x, plot.y1, x, plot.y1 + _TICK], "black")
        box = _centred(x, plot.y1 + _TICK + _GAP, str(value), font)
        texts.append(("x tick", str(value), _text(draw, box, str(value), font)))
    box = _centred((plot.x0 + plot.x1) // 2, height - _MARGIN - line, x_label, font)
    texts.append(("x label", x_label, _text(draw, box, x_label, font)))

    points = []
    for s in series:
        at = tuple((x_of(x), y_of(y)) for x, y in zip(s.xs, s.ys, strict=True))
        points.append(at)
        for start, end in itertools.pairwise(at):
            _segment(draw, start, end, s.colour, dashed=s.dashed)
        for x, y in at:
            _marker(draw, x, y, s.marker, s.colour)
    texts += _corner_legend(draw, plot, series, legend_font)
    draw.rectangle([plot.x0, plot.y0, plot.x1 - 1, plot.y1 - 1], outline="black")
    pixels = np.asarray(image, dtype=np.uint8)
    pixels.flags.writeable = False
    return LineChart(pixels, tuple(series), tuple(points), plot, tuple(texts))


def _with_margin(low: float, high: float) -> tuple[float, float]:
    """``(low, high)`` widened by 5% of its span on each side (by 0.5 when it is empty)."""
    margin = 0.05 * (high - low) if high > low else 0.5
    return low - margin, high + margin


def _segment(
    draw: ImageDraw.ImageDraw,
    start: tuple[int, int],
    end: tuple[int, int],
    colour: tuple[int, int, int],
    *,
    dashed: bool,
) -> None:
    if not dashed:
        draw.line([start, end], colour, width=2)
        return
    length = math.dist(start, end)
    dash = 5.0  # on and off alike
    for i in range(math.ceil(length / (2 * dash))):
        a, b = 2 * i * dash / length, min(1.0, (2 * i + 1) * dash / length)
        draw.line(
            [
                (start[0] + a * (end[0] - start[0]), start[1] + a * (end[1] - start[1])),
                (start[0] + b * (end[0] - start[0]), start[1] + b * (end[1] - start[1])),
            ],
            colour,
            width=2,
        )


def _marker(draw: ImageDraw.ImageDraw, x: int, y: int, marker: str, colour: Any) -> None:
    r = 3
    if marker == "o":
        draw.ellipse([x - r, y - r, x + r, y + r], colour)
    elif marker == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], colour)


def _corner_legend(
    draw: ImageDraw.ImageDraw, plot: Box, series: Sequence[Series], font: _Font
) -> list[tuple[str, str, Box]]:
    """A framed legend on white in the plot's lower right corner; its texts' boxes."""
    line = _line_height(font)
    sample = 2 * line  # the length of each entry's line
    inner = max((text_width(s.label, font) for s in series), default=0) + sample + 3 * _GAP
    box = Box(
        plot.x1 - _MARGIN - inner - 2 * _GAP,
        plot.y1 - _MARGIN - len(series) * (line + _GAP) - _GAP,
        plot.x1 - _MARGIN,
        plot.y1 - _MARGIN,
    )
    if not series:
        return []
    draw.rectangle([box.x0, box.y0, box.x1 - 1, box.y1 - 1], "white", outline=(204, 204, 204))
    texts = []
    for i, s in enumerate(series):
        y = box.y0 + _GAP + i * (line + _GAP)
        x, middle = box.x0 + 2 * _GAP, y + line // 2
        _segment(draw, (x, middle), (x + sample, middle), s.colour, dashed=s.dashed)
        _marker(draw, x + sample // 2, middle, s.marker, s.colour)
        at = Box(x + sample + _GAP, y, x + sample + _GAP + text_width(s.label, font), y + line)
        texts.append(("legend", s.label, _text(draw, at, s.label, font)))
    return texts


def _y_room(labels: Sequence[str], font: _Font) -> int:
    """Pixels left of a plot for the y label, the tick labels and the ticks."""
    widest = max((text_width(t, font) for t in labels), default=0)
    return _line_height(font) + _GAP + widest + _TICK + _GAP


def _y_axis(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    plot: Box,
    values: Sequence[float],
    labels: Sequence[str],
    y_of: Callable[[float], int],
    font: _Font,
    label: str,
) -> list[tuple[str, str, Box]]:
    """Ticks, their labels and the upright axis label left of ``plot``; their texts' boxes."""
    line = _line_height(font)
    texts = []
    for value, text in zip(values, labels, strict=True):
        y = y_of(value)
        draw.line([plot.x0 - _TICK, y, plot.x0, y], "black")
        x1 = plot.x0 - _TICK - _GAP
        box = Box(x1 - text_width(text, font), y - line // 2, x1, y - line // 2 + line)
        texts.append(("y tick", text, _text(draw, box, text, font)))
    x = plot.x0 - _y_room(labels, font) + line // 2
    box = _upright(image, label, font, x, (plot.y0 + plot.y1) // 2, centred=True)
    texts.append(("y label", label, box))
    return texts


def _integer_ticks(highest: int, most: int = 8) -> list[int]:
    """Up to ``most`` whole numbers from 0 to ``highest``, a step of 1, 2, 5, 10, 20… apart.

    Example:
        >>> _integer_ticks(3), _integer_ticks(12), _integer_ticks(1500, most=4)
        ([0, 1, 2, 3], [0, 2, 4, 6, 8, 10, 12], [0, 500, 1000, 1500])
    """
    step, grow = 1, itertools.cycle((2, 2.5, 2))
    while highest // step > most - 1:
        step = round(step * next(grow))
    return list(range(0, highest + 1, step))


def _line_height(font: _Font) -> int:
    top, bottom = line_metrics(font)
    return bottom - top


def _text(draw: ImageDraw.ImageDraw, box: Box, text: str, font: _Font) -> Box:
    """Draw ``text`` with its line's top-left corner at the box's; returns the box."""
    draw.text((box.x0, box.y0 - line_metrics(font)[0]), text, fill="black", font=font)
    return box


def _centred(x: int, y: int, text: str, font: _Font) -> Box:
    """The box of ``text`` centred on column ``x``, its line's top at ``y``."""
    width = text_width(text, font)
    return Box(x - width // 2, y, x - width // 2 + width, y + _line_height(font))


def _upright(
    image: Image.Image, text: str, font: _Font, x: int, y: int, *, centred: bool = False
) -> Box:
    """Draw ``text`` turned upright (read from the bottom up), centred on column ``x``.

    Its top is at ``y`` (its middle with ``centred``). Returns its box.
    """
    top, bottom = line_metrics(font)
    flat = Image.new("L", (max(1, text_width(text, font)), bottom - top), 0)
    ImageDraw.Draw(flat).text((0, -top), text, fill=255, font=font)
    turned = flat.transpose(Image.Transpose.ROTATE_90)
    x0 = x - turned.width // 2
    y0 = y - turned.height // 2 if centred else y
    image.paste((0, 0, 0), (x0, y0), turned)
    return Box(x0, y0, x0 + turned.width, y0 + turned.height)


def _category_colour(i: int) -> tuple[int, int, int]:
    """A fixed colour per category position: object, part, material always look the same."""
    from matplotlib import colormaps

    rgba = colormaps["tab10"](i % 10)
    return (round(255 * rgba[0]), round(255 * rgba[1]), round(255 * rgba[2]))
