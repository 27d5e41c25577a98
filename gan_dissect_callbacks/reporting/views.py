"""Views of a dissection for TensorBoard: unit galleries, the unit-class chart, tables, layouts.

Every function here is pure rendering: it takes tensors or a
:class:`~gan_dissect_callbacks.engines.dissection.LayerReport` and returns an image tensor in
``[0, 1]``, a matplotlib figure, a markdown string or a plain dict, ready for the matching
``SummaryWriter.add_*`` call. Nothing here writes to a logger.

- :func:`unit_overlay` / :func:`unit_gallery`: the paper's gallery look, each unit's
  top-activating samples with everything outside its thresholded region darkened and a thin
  yellow contour, one titled row per unit.
- :func:`category_chart` and :func:`figure_to_image`: the paper's unit-class distribution chart.
- :func:`units_markdown`: the interpretable units as a markdown table (TensorBoard's text plugin).
- :func:`layer_scalar_tags` and :func:`custom_scalars_layout`: the scalar tags of a dissection and
  a custom-scalars layout that groups them.
- :func:`label_stability`: how many units keep their concept from one dissection to the next.

Example:
    >>> import torch
    >>> images = torch.zeros(1, 3, 4, 4)  # mid-grey in [-1, 1]
    >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    >>> masks[0, 1:4, 1:4] = True
    >>> overlay = unit_overlay(images, masks)
    >>> overlay[0, 0]  # red channel: darkened outside, yellow (1) on the contour, kept inside
    tensor([[0.2500, 0.2500, 0.2500, 0.2500],
            [0.2500, 1.0000, 1.0000, 1.0000],
            [0.2500, 1.0000, 0.5000, 0.5000],
            [0.2500, 1.0000, 0.5000, 0.5000]])
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from gan_dissect_callbacks.reporting.images import image_grid, to_unit_range

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import LayerReport
    from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

__all__ = [
    "GalleryRow",
    "category_chart",
    "custom_scalars_layout",
    "figure_to_image",
    "label_stability",
    "layer_scalar_tags",
    "unit_gallery",
    "unit_overlay",
    "units_markdown",
]

#: How much the pixels outside a unit's region are dimmed (the paper's galleries: ×0.5).
OUTSIDE_BRIGHTNESS = 0.5
#: Colour of the region's contour, RGB in ``[0, 1]``.
CONTOUR_COLOUR = (1.0, 1.0, 0.0)

_PADDING = 2  # pixels between gallery images, and around titles
_BACKGROUND = 1.0  # white, the padding value of image_grid


# ------------------------------------------------------------------------------ overlays


def _check_images_and_masks(images: Tensor, masks: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"Expected argument `images` to be a tensor of shape [N, 3, H, W], but got {shape}."
        )
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool:
        kind = masks.dtype if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"Expected argument `masks` to be a bool tensor, but got {kind}.")
    expected = (images.shape[0], *images.shape[2:])
    if tuple(masks.shape) != expected:
        raise ValueError(
            f"Expected argument `masks` to have shape [N, H, W] = {list(expected)} matching "
            f"`images`, but got {list(masks.shape)}."
        )


def _region_contour(masks: Tensor) -> Tensor:
    """Region pixels with at least one 4-neighbour outside the region.

    Neighbours beyond the image edge count as inside: the contour marks where a region ends
    within the picture, not the picture's frame.
    """
    inner = masks.clone()
    inner[:, 1:, :] &= masks[:, :-1, :]
    inner[:, :-1, :] &= masks[:, 1:, :]
    inner[:, :, 1:] &= masks[:, :, :-1]
    inner[:, :, :-1] &= masks[:, :, 1:]
    return masks & ~inner


def unit_overlay(images: Tensor, masks: Tensor) -> Tensor:
    """Show where a unit fires: dim everything outside its region and outline the region.

    Pixels outside the mask are multiplied by :data:`OUTSIDE_BRIGHTNESS` (0.5); the region's
    boundary pixels (region pixels with a 4-neighbour outside it; the image edge does not count
    as outside) are painted :data:`CONTOUR_COLOUR` (yellow); the rest of the region is unchanged.

    Args:
        images: ``[N, 3, H, W]`` images in ``[-1, 1]``.
        masks: ``[N, H, W]`` bool, the unit's thresholded region on each image.

    Returns:
        ``[N, 3, H, W]`` float images in ``[0, 1]`` on the device of ``images``.

    Raises:
        ValueError: if the shapes do not match or ``masks`` is not bool.

    Example:
        >>> import torch
        >>> masks = torch.zeros(1, 3, 3, dtype=torch.bool)
        >>> masks[0, 1, 1] = True  # a single pixel is all contour
        >>> unit_overlay(torch.ones(1, 3, 3, 3), masks)[0, 2]  # blue channel of white images
        tensor([[0.5000, 0.5000, 0.5000],
                [0.5000, 0.0000, 0.5000],
                [0.5000, 0.5000, 0.5000]])
    """
    _check_images_and_masks(images, masks)
    x = to_unit_range(images)
    masks = masks.to(x.device)
    dimmed = torch.where(masks.unsqueeze(1), x, x * OUTSIDE_BRIGHTNESS)
    colour = torch.tensor(CONTOUR_COLOUR, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.where(_region_contour(masks).unsqueeze(1), colour, dimmed)


# ------------------------------------------------------------------------------ gallery


@dataclass(frozen=True)
class GalleryRow:
    """One unit's row in a :func:`unit_gallery`.

    Attributes:
        title: text written above the row, e.g. ``"layer3 #12 window IoU 0.23"``.
        images: ``[k, 3, H, W]`` the unit's top-activating samples in ``[-1, 1]`` (k ≥ 1).
        masks: ``[k, H, W]`` bool, the unit's thresholded region on each of them.

    Raises:
        ValueError: if the shapes do not match, ``k`` is 0 or ``masks`` is not bool.
    """

    title: str
    images: Tensor
    masks: Tensor

    def __post_init__(self) -> None:
        _check_images_and_masks(self.images, self.masks)
        if self.images.shape[0] == 0:
            raise ValueError(
                f"Expected at least one image in the gallery row {self.title!r}, but got none."
            )


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    """Width of ``text`` and the height of a line of the gallery font, in pixels."""
    font = _font()
    width = int(np.ceil(font.getbbox(text)[2])) if text else 0
    height = int(np.ceil(font.getbbox("Ag|")[3]))
    return width, height


def _title_height() -> int:
    return _text_size("")[1] + _PADDING


def _text_band(text: str, width: int, height: int) -> Tensor:
    """``[3, height, width]`` black ``text`` on white, starting at the left padding."""
    band = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(band).text((_PADDING, _PADDING // 2), text, fill="black", font=_font())
    pixels = torch.from_numpy(np.array(band, dtype=np.uint8))  # [H, W, 3]
    return pixels.permute(2, 0, 1).float() / 255


def _pad_right(image: Tensor, width: int) -> Tensor:
    if image.shape[-1] == width:
        return image
    pad = torch.full((3, image.shape[1], width - image.shape[2]), _BACKGROUND)
    return torch.cat([image, pad], dim=2)


def unit_gallery(rows: Sequence[GalleryRow], *, scale: int = 2) -> Tensor:
    """Tile units' overlays into one image: one row per unit, its title written above the row.

    Each row's images and masks are enlarged ``scale`` times (nearest neighbour) so that tiny
    32-pixel samples sit beside readable text, then drawn with :func:`unit_overlay` (so the
    contour stays 1 pixel thin at the enlarged size). Rows are separated by a white padding of
    2 pixels. With ``n`` rows of ``k_i`` images of ``H_i × W_i`` pixels, the result is
    ``[3, Σ_i (T + scale·H_i + 4), max(max_i (2 + k_i·(scale·W_i + 2)), widest title + 4)]``
    where ``T`` is the height of a title line (font height + 2). With no rows the image just says
    "no units to show".

    Args:
        rows: the units to show, top to bottom.
        scale: integer enlargement factor (≥ 1).

    Returns:
        ``[3, H', W']`` float image in ``[0, 1]`` on the CPU, for ``SummaryWriter.add_image``.

    Raises:
        ValueError: if ``scale`` is not a positive integer or a row is not a :class:`GalleryRow`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
        >>> row = GalleryRow("layer3 #12 window IoU 0.23", images, images[:, 0] > 0)
        >>> gallery = unit_gallery([row, row], scale=2)
        >>> gallery.shape[0], gallery.shape[2]  # width: 2 + 4 * (64 + 2)
        (3, 266)
        >>> bool(gallery.min() >= 0 and gallery.max() <= 1)
        True
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"Expected argument `scale` to be an integer ≥ 1, but got {scale!r}.")
    for i, row in enumerate(rows):
        if not isinstance(row, GalleryRow):
            raise ValueError(
                f"Expected `rows` to hold GalleryRow objects, but row {i} is {type(row).__name__}."
            )
    if not rows:
        text = "no units to show"
        width = _text_size(text)[0] + 2 * _PADDING
        return _text_band(text, width, _title_height() + _PADDING)

    grids = []
    for row in rows:
        images = row.images.detach().cpu()
        masks = row.masks.cpu()
        if scale > 1:
            images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
            masks = masks.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        overlay = unit_overlay(images, masks)
        grids.append(
            image_grid(
                overlay, nrow=len(overlay), padding=_PADDING, pad_value=_BACKGROUND, signed=False
            )
        )
    width = max(
        max(grid.shape[2] for grid in grids),
        max(_text_size(row.title)[0] for row in rows) + 2 * _PADDING,
    )
    title_height = _title_height()
    blocks = []
    for row, grid in zip(rows, grids, strict=True):
        blocks.append(_text_band(row.title, width, title_height))
        blocks.append(_pad_right(grid, width))
    return torch.cat(blocks, dim=1)


# ------------------------------------------------------------------------------ figures


def category_chart(layer: LayerReport, vocabulary: ConceptVocabulary) -> Figure:
    """The paper's unit-class distribution chart of one layer.

    One bar per concept that labels at least one interpretable unit, its height the number of
    such units. Bars are grouped by category (the vocabulary's order, then categories that only
    the report knows), sorted by count within a category (ties by name), and coloured by
    category; the legend reads ``"object: 3 units"``; the title is the layer's summary line
    (:meth:`~gan_dissect_callbacks.engines.dissection.LayerReport.summary`). A layer without
    interpretable units gives a figure that says "no interpretable units".

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
    counts = layer.counts_by_category(vocabulary.categories)
    by_concept = layer.counts_by_concept()
    category_of = {u.concept: u.category for u in layer.interpretable_units}
    colours = {cat: _category_colour(i) for i, cat in enumerate(counts)}
    bars = [
        (concept, n, category)
        for category in counts
        for concept, n in sorted(
            ((c, n) for c, n in by_concept.items() if category_of[c] == category),
            key=lambda cn: (-cn[1], cn[0]),
        )
    ]

    fig = Figure(figsize=(max(4.0, 1.5 + 0.3 * len(bars)), 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.suptitle(layer.summary(vocabulary.categories), fontsize=9)
    if not bars:
        ax.text(
            0.5, 0.5, "no interpretable units", ha="center", va="center", transform=ax.transAxes
        )
        ax.set_xticks([])
        ax.set_yticks([])
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
    handles = [
        Patch(color=colours[cat], label=f"{cat}: {n} unit{'' if n == 1 else 's'}")
        for cat, n in counts.items()
        if n > 0
    ]
    # Above the bars, never over them.
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncols=min(len(handles), 4),
        fontsize=8,
        frameon=False,
        borderaxespad=0.2,
    )
    return fig


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
    if not isinstance(fig, Figure):
        raise ValueError(
            f"Expected argument `fig` to be a matplotlib Figure, but got {type(fig).__name__}."
        )
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = torch.from_numpy(np.array(canvas.buffer_rgba(), dtype=np.uint8))  # [H, W, 4], a copy
    rgba = rgba.permute(2, 0, 1).float() / 255
    rgb, alpha = rgba[:3], rgba[3:]
    return rgb * alpha + (1 - alpha)


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


def layer_scalar_tags(layer: str, categories: Sequence[str]) -> dict[str, str]:
    """The scalar tags a dissection of ``layer`` is logged under, keyed by what they measure.

    ``"interpretable_units/{category}"`` for every category, then
    ``"interpretable_units/total"``, ``"distinct_concepts"``, ``"label_stability"`` and
    ``"mean_best_iou"``; each tag is ``"dissection/{layer}/{key}"``.

    Args:
        layer: the layer name, e.g. ``"generator.layer3"``.
        categories: the concept categories (``"total"`` is reserved).

    Raises:
        ValueError: if a name is empty or repeated, or a category is called ``"total"``.

    Example:
        >>> tags = layer_scalar_tags("layer3", ["object", "part"])
        >>> tags["interpretable_units/part"], tags["label_stability"]
        ('dissection/layer3/interpretable_units/part', 'dissection/layer3/label_stability')
        >>> list(tags)
        ['interpretable_units/object', 'interpretable_units/part', 'interpretable_units/total', 'distinct_concepts', 'label_stability', 'mean_best_iou']
    """  # noqa: E501
    _check_names("layers", [layer], allow_empty=False)
    _check_names("categories", categories, allow_empty=True)
    if "total" in categories:
        raise ValueError(
            "Expected no category called 'total' in `categories` (the tag of the total count), "
            f"but got {list(categories)}."
        )
    keys = [f"interpretable_units/{c}" for c in categories]
    keys += ["interpretable_units/total", "distinct_concepts", "label_stability", "mean_best_iou"]
    return {key: f"dissection/{layer}/{key}" for key in keys}


def _exactly(tag: str) -> str:
    # Custom-scalars charts match tags by regular expression; anchor and escape so that
    # "layer1" does not also pick "layer10" and a "." in a layer name is literal.
    return f"^{re.escape(tag)}$"


def custom_scalars_layout(
    layers: Sequence[str], categories: Sequence[str]
) -> dict[str, dict[str, list[Any]]]:
    """A TensorBoard custom-scalars layout grouping the curves of a dissection.

    The format is the one ``SummaryWriter.add_custom_scalars`` expects:
    ``{section: {chart: ["Multiline", [tag regexes]]}}``. Section ``"dissection (all layers)"``
    holds the charts ``"distinct concepts (all layers)"``, ``"label stability (all layers)"`` and
    ``"mean best IoU (all layers)"`` (one curve per layer); then a section
    ``"dissection: {layer}"`` per layer holds ``"interpretable units by category"`` (one curve per
    category and the total). Tags are those of :func:`layer_scalar_tags`, as anchored, escaped
    regular expressions (the custom-scalars plugin matches tags by regex).

    Args:
        layers: the dissected layer names.
        categories: the concept categories.

    Raises:
        ValueError: if a name is empty or repeated, ``layers`` is empty, or a category is called
            ``"total"``.

    Example:
        >>> layout = custom_scalars_layout(["layer3"], ["object"])
        >>> list(layout)
        ['dissection (all layers)', 'dissection: layer3']
        >>> layout["dissection: layer3"]["interpretable units by category"]
        ['Multiline', ['^dissection/layer3/interpretable_units/object$', '^dissection/layer3/interpretable_units/total$']]
    """  # noqa: E501
    _check_names("layers", layers, allow_empty=False)
    tags = {layer: layer_scalar_tags(layer, categories) for layer in layers}
    across = {
        "distinct concepts (all layers)": "distinct_concepts",
        "label stability (all layers)": "label_stability",
        "mean best IoU (all layers)": "mean_best_iou",
    }
    layout: dict[str, dict[str, list[Any]]] = {
        "dissection (all layers)": {
            chart: ["Multiline", [_exactly(tags[layer][key]) for layer in layers]]
            for chart, key in across.items()
        }
    }
    for layer in layers:
        counts = [f"interpretable_units/{c}" for c in categories] + ["interpretable_units/total"]
        layout[f"dissection: {layer}"] = {
            "interpretable units by category": [
                "Multiline",
                [_exactly(tags[layer][key]) for key in counts],
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
