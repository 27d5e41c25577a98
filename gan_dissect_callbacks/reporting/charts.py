"""Charts for TensorBoard: the paper's unit-class distribution, and figures as image tensors.

Pure rendering. :func:`category_chart` draws a layer's unit classes with Pillow, in a few
milliseconds (the matplotlib figure it replaced took about 0.1 s, several times per
dissection), and says where it put every bar and text. For matplotlib figures (the
intervention's removal curves), :func:`figure_to_image` turns one into a ``[3, H, W]`` tensor
in ``[0, 1]``, :func:`figure_pixels` into the 8-bit pixels TensorBoard stores of it, and
:func:`lay_out_plot` sets a plot's margins from its texts without drawing it first.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from gan_dissect_callbacks.reporting.images import (
    from_pixels,
    image_pixels,
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
    "category_chart",
    "figure_pixels",
    "figure_to_image",
    "lay_out_plot",
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
class CategoryChart:
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

    pixels: np.ndarray
    title: str
    bars: tuple[Bar, ...]
    legend: tuple[tuple[str, tuple[int, int, int]], ...]
    plot: Box
    texts: tuple[tuple[str, str, Box], ...]

    def image(self) -> Tensor:
        """The chart as a ``[3, H, W]`` float image in ``[0, 1]``."""
        return from_pixels(self.pixels)


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


#: Sizes of the chart in pixels: its height, its least width, the width it takes per bar, the
#: margin around everything, the ticks' length and the gap between texts and what they label.
_HEIGHT, _MIN_WIDTH, _PER_BAR, _MARGIN, _TICK, _GAP = 320, 400, 30, 5, 4, 3
#: Font sizes (pixels) of the title and of every other text. The matplotlib figure this chart
#: replaced used 9 and 8 points at 100 dpi (12.5 and 11 px); at 11 px Pillow's font runs words
#: together, so one pixel more.
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
    # Above the bars, never over them; long category names: one entry per line.
    columns = 1 if sum(len(text) for text, _ in legend) > 60 else max(1, min(len(legend), 4))
    column_widths = [max(entries[i::columns]) for i in range(min(columns, len(entries)))]
    column_gap = 2 * _TEXT_SIZE
    legend_width = sum(column_widths) + column_gap * max(0, len(column_widths) - 1)
    legend_rows = -(-len(legend) // columns)

    names = max((text_width(name, font) for name, _, _ in bars), default=0)
    title_height = _line_height(title_font)
    legend_top = _MARGIN + title_height + _GAP
    top = legend_top + legend_rows * (line + _GAP) + _MARGIN
    bottom = _HEIGHT - _MARGIN - (names + _TICK + _GAP if bars else 0)
    highest = max((n for _, n, _ in bars), default=0)
    # As many tick labels as fit with a line between them (matplotlib's at most 9 are denser).
    ticks = _integer_ticks(highest, most=max(2, (bottom - top) // (2 * line))) if bars else []
    widest_tick = max((text_width(str(t), font) for t in ticks), default=0)
    left = _MARGIN + (line + _GAP + widest_tick + _TICK + _GAP if bars else 0)
    needed = max(left + legend_width + 3 * _MARGIN, text_width(title, title_font) + 2 * _MARGIN)
    width = max(_MIN_WIDTH, 150 + _PER_BAR * len(bars), -(-needed // 25) * 25)  # steps of 25 px
    title_box = _centred(width // 2, _MARGIN, title, title_font)
    plot = Box(left, top, width - 2 * _MARGIN, bottom)

    image = Image.new("RGB", (width, _HEIGHT), "white")
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
        for value in ticks:
            y = y_of(value)
            draw.line([plot.x0 - _TICK, y, plot.x0, y], "black")
            text = str(value)
            x1 = plot.x0 - _TICK - _GAP
            box = Box(x1 - text_width(text, font), y - line // 2, x1, y - line // 2 + line)
            texts.append(("y tick", text, _text(draw, box, text, font)))
        y_label = "interpretable units"
        middle = (plot.y0 + plot.y1) // 2
        box = _upright(image, y_label, font, _MARGIN + line // 2, middle, centred=True)
        texts.append(("y label", y_label, box))
    draw.rectangle([plot.x0, plot.y0, plot.x1 - 1, plot.y1 - 1], outline="black")
    pixels = np.asarray(image, dtype=np.uint8)
    pixels.flags.writeable = False  # shared by every caller of the same data
    return CategoryChart(pixels, title, tuple(drawn), legend, plot, tuple(texts))


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


# ------------------------------------------------------------------------------ figures


def lay_out_plot(fig: Figure) -> None:
    """Set the margins of a figure's one plot from its texts: tick labels, axis labels, title.

    What ``fig.tight_layout()`` does for such a plot, at about half the cost: tight layout draws
    the figure once to measure its texts, and the figure is drawn again when it is rendered;
    here each text's size is computed from its string and font, with matplotlib's default
    spacing (ticks 3.5 points long, tick labels 3.5 points from them, axis labels 4 points from
    the tick labels, the title 6 points above the axes).

    Args:
        fig: a figure whose first axes is the plot; its subplot parameters are set.

    Example:
        >>> fig = Figure(figsize=(4, 3), dpi=80)
        >>> ax = fig.add_subplot()
        >>> _ = ax.plot([0, 10], [0.0, 1.0]), ax.set_xlabel("units ablated"), ax.set_title("t")
        >>> lay_out_plot(fig)
        >>> p = fig.subplotpars
        >>> [round(float(x), 2) for x in (p.left, p.bottom, p.right, p.top)]
        [0.09, 0.16, 0.97, 0.9]
    """
    ax = fig.axes[0]
    renderer = _renderer(fig)
    points, pad = fig.dpi / 72, _PAD * fig.dpi
    width, height = fig.bbox.width, fig.bbox.height
    x_labels = _tick_labels(ax.xaxis, ax.get_xlim())
    x_font = _tick_font(ax.xaxis)
    bottom = pad
    if x_labels:
        bottom += max(_text_size(renderer, t, x_font)[1] for t in x_labels) + _TICK_ROOM * points
    if ax.get_xlabel():
        label = ax.xaxis.label
        bottom += _text_size(renderer, label.get_text(), label.get_fontproperties())[1] + 4 * points
    # The last x tick label is centred on the axes' right edge: half of it lies beyond.
    right = pad
    if x_labels:
        right += _text_size(renderer, x_labels[-1], x_font)[0] / 2
    top = pad
    if ax.get_title():
        title = ax.title
        top += _text_size(renderer, title.get_text(), title.get_fontproperties())[1] + 6 * points
    fig.subplots_adjust(
        left=(pad + _y_axis_room(renderer, ax)) / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
    )


#: Blank margin around a laid-out figure, in inches.
_PAD = 0.05
#: Tick length and the tick labels' distance from the ticks, in points (matplotlib's defaults).
_TICK_ROOM = 7.0


def _renderer(fig: Figure) -> RendererAgg:
    """The Agg renderer ``fig`` is drawn with, to measure its texts (one per layout)."""
    if isinstance(fig.canvas, FigureCanvasAgg):
        return fig.canvas.get_renderer()
    # Measured as Agg draws it, leaving the figure's own canvas (pyplot's, say) alone.
    return RendererAgg(int(fig.bbox.width), int(fig.bbox.height), fig.dpi)


def _text_size(renderer: RendererAgg, text: str, font: FontProperties) -> tuple[float, float]:
    """``(width, height)`` in pixels of ``text`` drawn unrotated in ``font``."""
    width, height, _ = renderer.get_text_width_height_descent(text, font, ismath=False)
    # matplotlib gives a line at least the height of "lp" (its ascent and descent).
    _, line, _ = renderer.get_text_width_height_descent("lp", font, ismath=False)
    return float(width), float(max(height, line))


def _tick_labels(axis: Any, limits: tuple[float, float]) -> list[str]:
    """The labels of an axis's major ticks inside ``limits``, as its formatter writes them."""
    low, high = sorted(limits)
    locations = [t for t in axis.get_majorticklocs() if low <= t <= high]
    return [str(t) for t in axis.get_major_formatter().format_ticks(locations)]


def _tick_font(axis: Any) -> FontProperties:
    """The font of an axis's tick labels (matplotlib's default size when it has none yet)."""
    labels = axis.get_ticklabels()
    if labels:
        return labels[0].get_fontproperties()
    size = rcParams["xtick.labelsize" if axis.axis_name == "x" else "ytick.labelsize"]
    return FontProperties(size=size)


def _y_axis_room(renderer: RendererAgg, ax: Any) -> float:
    """Pixels left of the axes that the y tick labels, their ticks and the y label take."""
    labels = _tick_labels(ax.yaxis, ax.get_ylim())
    if not labels:
        return 0.0
    points = renderer.dpi / 72
    font = _tick_font(ax.yaxis)
    room = max(_text_size(renderer, t, font)[0] for t in labels) + _TICK_ROOM * points
    if ax.get_ylabel():
        label = ax.yaxis.label
        room += _text_size(renderer, label.get_text(), label.get_fontproperties())[1] + 4 * points
    return room


def figure_to_image(fig: Figure) -> Tensor:
    """Render a matplotlib figure to an image tensor and close it.

    The figure is drawn on an Agg canvas (no display needed); transparent areas are composited
    over white. A figure managed by ``pyplot`` is closed there, so figures logged at every
    dissection do not pile up.

    Args:
        fig: the figure.

    Returns:
        ``[3, H, W]`` float image in ``[0, 1]`` (``H, W`` = the figure size in inches × dpi).

    Raises:
        ValueError: if ``fig`` is not a matplotlib figure.

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 1), dpi=50)
        >>> image = figure_to_image(fig)
        >>> tuple(image.shape), image.unique().tolist()  # an empty figure is white
        ((3, 50, 100), [1.0])
    """
    rgba = _render(fig)
    if (rgba[..., 3] == 255).all():
        return from_pixels(rgba[..., :3])
    return _over_white(rgba)


def figure_pixels(fig: Figure) -> np.ndarray:
    """Render a matplotlib figure to ``[H, W, 3]`` uint8 pixels and close it.

    The pixels TensorBoard stores for :func:`figure_to_image`'s image
    (:func:`~gan_dissect_callbacks.reporting.images.to_pixels`): an opaque figure gives the
    canvas's own pixels, without a detour through floats.

    Raises:
        ValueError: if ``fig`` is not a matplotlib figure.

    Example:
        >>> from matplotlib.figure import Figure
        >>> pixels = figure_pixels(Figure(figsize=(2, 1), dpi=50, facecolor="red"))
        >>> pixels.shape, pixels[0, 0].tolist()
        ((50, 100, 3), [255, 0, 0])
    """
    rgba = _render(fig)
    if (rgba[..., 3] == 255).all():
        return np.ascontiguousarray(rgba[..., :3])
    return image_pixels(_over_white(rgba))


def _render(fig: Figure) -> np.ndarray:
    """``[H, W, 4]`` uint8: the figure drawn on an Agg canvas; a ``pyplot`` figure is closed."""
    if not isinstance(fig, Figure):
        raise ValueError(
            f"Expected argument `fig` to be a matplotlib Figure, but got {type(fig).__name__}."
        )
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)  # a copy: the canvas may be reused


def _over_white(rgba: np.ndarray) -> Tensor:
    """``[3, H, W]`` floats in ``[0, 1]``: ``[H, W, 4]`` uint8 pixels composited over white."""
    x = torch.from_numpy(rgba).permute(2, 0, 1).float() / 255
    rgb, alpha = x[:3], x[3:]
    return rgb * alpha + (1 - alpha)
