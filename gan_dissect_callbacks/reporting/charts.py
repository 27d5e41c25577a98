"""Charts for TensorBoard: the paper's unit-class distribution, and figures as image tensors.

Pure rendering: a :class:`~gan_dissect_callbacks.engines.dissection.LayerReport` in, a matplotlib
figure out; :func:`figure_to_image` turns any figure into a ``[3, H, W]`` tensor in ``[0, 1]``,
:func:`figure_pixels` into the 8-bit pixels TensorBoard stores of it, and :func:`lay_out_plot`
sets a plot's margins from its texts without drawing it first.
:func:`category_chart_pixels` draws a chart only for data it has not drawn lately: drawing
costs several hundredths of a second, and a layer's unit classes can stay the same from one
dissection to the next (once labels settle).
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from gan_dissect_callbacks.reporting.images import from_pixels, image_pixels

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import LayerReport
    from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

__all__ = [
    "category_chart",
    "category_chart_pixels",
    "figure_pixels",
    "figure_to_image",
    "lay_out_plot",
]

# ------------------------------------------------------------------------------ figures


def category_chart(layer: LayerReport, vocabulary: ConceptVocabulary) -> Figure:
    """The paper's unit-class distribution chart of one layer.

    One bar per concept that labels at least one interpretable unit, its height the number of
    such units. Bars are grouped by category (the vocabulary's order, then categories that only
    the report knows), sorted by count within a category (ties by name), and coloured by
    category; the legend reads ``"object: 3 units"``; the title is the layer's summary line
    (:meth:`~gan_dissect_callbacks.engines.dissection.LayerReport.summary`). The figure is
    widened until the legend and the title fit inside it, whatever the categories' names. A
    layer without interpretable units gives a figure that says "no interpretable units".

    The figure is drawn with matplotlib's Agg canvas and is not registered with ``pyplot``, so
    no display is needed and nothing global is touched; :func:`figure_to_image` renders it.

    Args:
        layer: the layer's dissection.
        vocabulary: the concept vocabulary of the dissection (for the category order).

    Returns:
        A matplotlib figure whose first axes hold the bars (``fig.axes[0].patches``).

    Example:
        >>> from gan_dissect_callbacks.engines.dissection import LayerReport, UnitReport
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary.from_pairs([("sky", "object"), ("window", "part")])
        >>> units = [UnitReport(u, c, vocab.category_of(c), 0.2, 1.0, 0.1, True)
        ...          for u, c in enumerate(["window", "sky", "window"])]
        >>> fig = category_chart(LayerReport("layer3", 3, units, []), vocab)
        >>> [(t.get_text(), int(p.get_height())) for t, p in
        ...  zip(fig.axes[0].get_xticklabels(), fig.axes[0].patches)]
        [('sky', 1), ('window', 2)]
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        ['object: 1 unit', 'part: 2 units']
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


def category_chart_pixels(layer: LayerReport, vocabulary: ConceptVocabulary) -> np.ndarray:
    """:func:`category_chart` drawn as ``[H, W, 3]`` uint8 pixels (:func:`figure_pixels`).

    The chart is a function of its title, legend and bars alone, so the pixels of the last 16
    distinct charts are kept and given again (read-only) for the same data; drawn with the
    matplotlib settings in force when first drawn.

    Example:
        >>> from gan_dissect_callbacks.engines.dissection import LayerReport, UnitReport
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary.from_pairs([("sky", "object")])
        >>> layer = LayerReport("l3", 2, [UnitReport(0, "sky", "object", 0.2, 1.0, 0.1, True)], [])
        >>> pixels = category_chart_pixels(layer, vocab)
        >>> pixels.shape, pixels is category_chart_pixels(layer, vocab)
        ((320, 400, 3), True)
    """
    return _cached_chart_pixels(_chart_data(layer, vocabulary))


@lru_cache(maxsize=16)
def _cached_chart_pixels(data: _ChartData) -> np.ndarray:
    pixels = figure_pixels(_draw_category_chart(*data))
    pixels.flags.writeable = False  # shared by every caller of the same data
    return pixels


def _draw_category_chart(
    title_text: str,
    category_counts: tuple[tuple[str, int], ...],
    bars: tuple[tuple[str, int, str], ...],
) -> Figure:
    counts = dict(category_counts)
    colours = {cat: _category_colour(i) for i, cat in enumerate(counts)}
    fig = Figure(figsize=(max(4.0, 1.5 + 0.3 * len(bars)), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    title = fig.suptitle(title_text, fontsize=9)
    if not bars:
        ax.text(
            0.5, 0.5, "no interpretable units", ha="center", va="center", transform=ax.transAxes
        )
        ax.set_xticks([])
        ax.set_yticks([])
        _lay_out(fig, [], [title])
        return fig
    positions = list(range(len(bars)))
    ax.bar(positions, [n for _, n, _ in bars], color=[colours[c] for _, _, c in bars], width=0.8)
    ax.set_xticks(positions, [name for name, _, _ in bars], rotation=90, fontsize=8)
    # Room for at least 6 bars, so one or two bars stay slim, centred.
    spare = max(0, 6 - len(bars)) / 2
    ax.set_xlim(-0.6 - spare, len(bars) - 0.4 + spare)
    ax.set_ylabel("interpretable units", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(axis="y", labelsize=8)
    labels = {cat: f"{cat}: {n} unit{'' if n == 1 else 's'}" for cat, n in counts.items() if n > 0}
    handles = [Patch(color=colours[cat], label=label) for cat, label in labels.items()]
    # Above the bars, never over them; long category names: one entry per line.
    long = sum(len(label) for label in labels.values()) > 60
    legend = ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncols=1 if long else min(len(handles), 4),
        fontsize=8,
        frameon=False,
        borderaxespad=0.2,
    )
    _lay_out(fig, [name for name, _, _ in bars], [legend, title])
    return fig


def _lay_out(fig: Figure, tick_labels: list[str], above: list[Any]) -> None:
    """Widen ``fig`` until ``above`` fits, and set the axes' margins from the texts around them.

    Left of the axes go the y tick labels and label, below them the x tick labels (turned
    upright: as tall as they are wide), above them ``above`` (the legend, then the title
    at the top), stacked; the figure is widened (by quarter inches) until the widest of ``above``
    fits beside the left margin, since long category names would clip otherwise. Every size is
    measured without drawing (see :func:`lay_out_plot`).
    """
    renderer = _renderer(fig)
    pad = _PAD * fig.dpi
    left = pad + _y_axis_room(renderer, fig.axes[0])
    needed = left + max(a.get_window_extent(renderer).width for a in above) + 3 * pad
    if needed > fig.bbox.width:
        # Quarter inches: exact in binary, so the rendered image is exactly the figure's size.
        fig.set_figwidth(math.ceil(4 * needed / fig.dpi) / 4)
    width, height = fig.bbox.width, fig.bbox.height
    font = _tick_font(fig.axes[0].xaxis)
    upright = max((_text_size(renderer, t, font)[0] for t in tick_labels), default=0.0)
    bottom = upright + _TICK_ROOM * fig.dpi / 72 + pad if tick_labels else pad
    # The suptitle hangs from 98% of the height.
    top = 0.02 * height + sum(a.get_window_extent(renderer).height for a in above) + pad
    fig.subplots_adjust(
        left=left / width, right=1 - 2 * pad / width, bottom=bottom / height, top=1 - top / height
    )


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


def _category_colour(i: int) -> tuple[float, float, float, float]:
    """A fixed colour per category position: object, part, material always look the same."""
    from matplotlib import colormaps

    rgba = colormaps["tab10"](i % 10)
    return (float(rgba[0]), float(rgba[1]), float(rgba[2]), float(rgba[3]))


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
