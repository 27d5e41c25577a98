"""What a user sees in TensorBoard's image cards: label sizes, outlines, legends, row labels.

TensorBoard's Images dashboard shows an image scaled to its card's width (350 px, measured in a
1400-px-wide window) unless "show actual image size" is ticked, so sizes are measured on the
rendered pixels and scaled to that display width.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY, render_scenes
from gan_dissect_callbacks.engines.dissection import LayerReport, UnitReport
from gan_dissect_callbacks.reporting.charts import (
    Box,
    Series,
    category_chart,
    line_chart,
)
from gan_dissect_callbacks.reporting.galleries import GalleryRow, unit_gallery, unit_overlay
from gan_dissect_callbacks.reporting.images import DISPLAY_WIDTH, label_cap_height, to_unit_range
from gan_dissect_callbacks.reporting.intervention import intervention_grid, removal_chart
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

GRID_KEYS = ("original", "ablated", "inserted")


def ink_rows(band: Tensor) -> Tensor:
    """Indices of the rows of ``[3, h, w]`` holding dark (text) pixels."""
    return (band < 0.5).all(dim=0).any(dim=1).nonzero().flatten()


def shown_height(pixels: int, image_width: int) -> float:
    """How tall ``pixels`` look in an image card ``DISPLAY_WIDTH`` wide (never enlarged)."""
    return pixels * min(1.0, DISPLAY_WIDTH / image_width)


def luminance(rgb: Tensor) -> Tensor:
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


# --------------------------------------------------------------------------------- labels


@pytest.mark.parametrize(("top_k", "size"), [(8, 32), (12, 32), (8, 64), (4, 16), (1, 32)])
def test_gallery_capitals_are_at_least_10_px_tall_in_a_350_px_card(top_k: int, size: int) -> None:
    images, masks = render_scenes(top_k, size=size, generator=torch.Generator().manual_seed(0))
    sky = masks[:, SCENE_VOCABULARY.index("sky")]
    gallery = unit_gallery([GalleryRow("HIH", images, sky), GalleryRow("HIH", images, sky)])
    width = gallery.shape[2]
    tile = -(-96 // size) * size  # samples are enlarged to ≥ 96 px
    assert tile >= 96
    block = gallery.shape[1] // 2
    band = gallery[:, : block - (tile + 4)]  # above the row of tiles and its padding
    rows = ink_rows(band)
    cap = int(rows.max() - rows.min() + 1)
    assert cap >= label_cap_height(width)  # the rule, stated in docs/tensorboard.md
    assert shown_height(cap, width) >= 10
    assert torch.all(gallery[:, block - 2 : block] == 1.0)  # a white gap under the tiles


def test_gallery_with_eight_32_px_samples_is_about_800_px_wide_with_23_px_capitals() -> None:
    images, masks = render_scenes(8, size=32, generator=torch.Generator().manual_seed(0))
    gallery = unit_gallery([GalleryRow("HIH", images, masks[:, 0])])
    assert DISPLAY_WIDTH == 350 and gallery.shape[2] == 2 + 8 * (96 + 2)
    rows = ink_rows(gallery[:, :40])
    assert rows.max() - rows.min() + 1 == 23  # 23 px · 350 / 786 ≈ 10.2 px on screen


def test_intervention_grid_rows_are_labelled_legibly_with_the_units() -> None:
    g = torch.Generator().manual_seed(0)
    shots = {k: torch.rand(8, 3, 32, 32, generator=g) * 2 - 1 for k in ("original", "ablated")}
    shots["inserted"] = shots["original"]
    plain = intervention_grid(shots)
    named = intervention_grid(shots, units=[3, 7, 12])
    width = named.shape[2]
    assert width == 2 + 8 * (64 + 2) and plain.shape == named.shape

    # three bands of text, each above a row of 64-px images
    band_height = (named.shape[1] - 3 * (64 + 2)) // 3
    assert band_height >= label_cap_height(width)
    bands = [
        named[:, i * (band_height + 66) : i * (band_height + 66) + band_height] for i in range(3)
    ]
    rows = [named[:, i * (band_height + 66) + band_height :][:, :64] for i in range(3)]
    for band in bands:
        assert ink_rows(band).numel() > 0
    for row, key in zip(rows, ("original", "ablated", "inserted"), strict=True):
        expected = to_unit_range(shots[key][0].repeat_interleave(2, 1).repeat_interleave(2, 2))
        assert torch.equal(row[:, :, 2:66], expected)  # the labels cover no sample

    def ink_width(band: Tensor) -> int:
        columns = (band < 0.5).all(dim=0).any(dim=0).nonzero().flatten()
        return int(columns.max() - columns.min() + 1)

    # "ablated: units 3, 7, 12" is wider than "ablated"; "original" names no units
    plain_bands = [plain[:, i * (band_height + 66) :][:, :band_height] for i in range(3)]
    assert torch.equal(plain_bands[0], bands[0])
    assert ink_width(bands[1]) > ink_width(plain_bands[1]) + 40
    assert ink_width(bands[2]) > ink_width(plain_bands[2]) + 40
    # the cap height: "units" has no capitals, so the ink of the lower-case "d" and "l" counts
    cap = ink_rows(bands[1])
    assert shown_height(int(cap.max() - cap.min() + 1), width) >= 10


# --------------------------------------------------------------------------------- contours


@pytest.mark.parametrize("colour", [(1.0, 1.0, 1.0), (1.0, 1.0, 0.0)], ids=["white", "yellow"])
def test_the_outline_stands_out_on_white_and_yellow_concepts(colour: tuple[float, ...]) -> None:
    rgb = torch.tensor(colour)
    images = (rgb * 2 - 1).view(1, 3, 1, 1).expand(1, 3, 12, 12).clone()  # a flat concept
    masks = torch.zeros(1, 12, 12, dtype=torch.bool)
    masks[0, 3:9, 3:9] = True
    out = unit_overlay(images, masks)[0].permute(1, 2, 0)
    inside, outside = rgb, rgb * 0.5  # the region, and the dimmed rest
    ring = torch.zeros(12, 12, dtype=torch.bool)
    ring[2, 3:9] = ring[9, 3:9] = ring[3:9, 2] = ring[3:9, 9] = True
    # each contour pixel has an outline pixel beside it that differs from both sides clearly
    assert (luminance(inside) - luminance(out[ring])).min() >= 0.85
    assert (luminance(outside) - luminance(out[ring])).min() >= 0.4
    assert ((out[ring] - inside).abs().amax(dim=-1) >= 0.99).all()


@pytest.mark.parametrize("concept", ["sun", "cloud"])
def test_the_outline_of_sun_and_cloud_in_a_gallery_is_dark_against_them(concept: str) -> None:
    images, masks = render_scenes(6, size=32, generator=torch.Generator().manual_seed(1))
    mask = masks[:, SCENE_VOCABULARY.index(concept)]
    assert mask.any()
    out = unit_overlay(images, mask).permute(0, 2, 3, 1)
    colour = to_unit_range(images).permute(0, 2, 3, 1)[mask].mean(dim=0)
    assert luminance(colour) > 0.75  # a light concept, on which yellow alone vanishes
    grown = mask.clone()
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    grown[:, :, 1:] |= mask[:, :, :-1]
    grown[:, :, :-1] |= mask[:, :, 1:]
    ring = grown & ~mask
    assert ring.any()
    assert (luminance(colour) - luminance(out[ring])).min() >= 0.75


# --------------------------------------------------------------------------------- legends


def ink_inside(pixels: Tensor, box: Box) -> bool:
    """Whether every dark pixel of the chart near ``box`` lies in it (a text's own box)."""
    dark = (pixels < 0.5).all(dim=0)
    grown = dark[max(0, box.y0 - 1) : box.y1 + 1, max(0, box.x0 - 1) : box.x1 + 1]
    inner = dark[box.y0 : box.y1, box.x0 : box.x1]
    return bool(inner.any()) and int(inner.sum()) == int(grown.sum())


def test_the_category_chart_legend_and_title_lie_inside_the_chart_with_long_names() -> None:
    categories = [
        "object",
        "material: a long category name that would be cut off",
        "another rather long category name",
        "part",
    ]
    vocab = ConceptVocabulary.from_pairs([(f"concept {i}", c) for i, c in enumerate(categories)])
    units = [
        UnitReport(u, f"concept {u % 4}", categories[u % 4], 0.2, 1.0, 0.1, True) for u in range(9)
    ]
    chart = category_chart(LayerReport("generator.layer3", 9, units, []), vocab)
    height, width = chart.pixels.shape[:2]
    whole = Box(0, 0, width, height)
    texts = [text for text, _ in chart.legend]
    assert "material: a long category name that would be cut off: 2 units" in texts
    shown = {kind for kind, _, _ in chart.texts}
    assert {"title", "legend"} <= shown
    for kind, text, box in chart.texts:
        if kind in ("title", "legend"):
            assert box.inside(whole), text
            assert not box.overlaps(chart.plot), text


@pytest.mark.parametrize("units_per_concept", [1, 1500])
def test_the_category_chart_texts_lie_inside_the_chart_and_clear_of_each_other(
    units_per_concept: int,
) -> None:
    # Long upright concept names below the plot, four-digit counts beside it.
    names = ["sky", "a rather long concept name", "window"]
    vocab = ConceptVocabulary.from_pairs(list(zip(names, ["object", "part", "part"])))
    units = [
        UnitReport(u, names[u % 3], vocab.category_of(names[u % 3]), 0.2, 1.0, 0.1, True)
        for u in range(3 * units_per_concept)
    ]
    chart = category_chart(LayerReport("generator.layer3", len(units), units, []), vocab)
    pixels = chart.image()
    height, width = chart.pixels.shape[:2]
    whole, plot = Box(0, 0, width, height), chart.plot
    kinds = [kind for kind, _, _ in chart.texts]
    assert kinds.count("x tick") == 3 and kinds.count("y tick") >= 2
    assert kinds.count("y label") == kinds.count("title") == 1
    for kind, text, box in chart.texts:
        assert box.inside(whole), text
        assert not box.overlaps(plot), text
        assert ink_inside(pixels, box), text  # the box holds the text, and only it
        if kind == "x tick":
            assert box.y0 > plot.y1  # below the plot
        elif kind in ("y tick", "y label"):
            assert box.x1 < plot.x0  # left of it
        else:
            assert box.y1 < plot.y0  # above it
    boxes = [box for _, _, box in chart.texts]
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1 :])
    top = {kind: box for kind, _, box in chart.texts if kind in ("title", "legend")}
    assert top["title"].y1 <= top["legend"].y0  # the title above the legend
    for bar in chart.bars:  # each bar stands on the plot's floor, inside it
        assert bar.box.inside(plot) and bar.box.y1 == plot.y1


@settings(max_examples=25, deadline=None)
@given(
    names=st.lists(st.text("abcdefgh ,", min_size=1, max_size=45), min_size=1, max_size=12,
                   unique=True),
    categories=st.lists(st.text("xyz ", min_size=1, max_size=30), min_size=1, max_size=7,
                        unique=True),
    counts=st.lists(st.integers(1, 3000), min_size=12, max_size=12),
)  # fmt: skip
def test_the_category_chart_keeps_its_plot_and_texts_apart_whatever_the_names(
    names: list[str], categories: list[str], counts: list[int]
) -> None:
    pairs = [(n, categories[i % len(categories)]) for i, n in enumerate(names)]
    vocab = ConceptVocabulary.from_pairs(pairs)
    units = [
        UnitReport(u, name, category, 0.2, 1.0, 0.1, True)
        for i, (name, category) in enumerate(pairs)
        for u in range(counts[i] % 7 + 1)
    ]
    chart = category_chart(LayerReport("generator.layer3", len(units), units, []), vocab)
    height, width = chart.pixels.shape[:2]
    assert chart.plot.y1 - chart.plot.y0 >= 120  # the bars keep room, however long the names
    for kind, text, box in chart.texts:
        assert box.inside(Box(0, 0, width, height)), (kind, text)
        assert not box.overlaps(chart.plot), (kind, text)


def test_a_line_chart_refuses_what_it_cannot_draw() -> None:
    good = Series("a", (0.0, 1.0), (0.0, 1.0), (0, 0, 0))
    with pytest.raises(ValueError, match="`y_ticks` to hold at least two finite values"):
        line_chart([good], title="t", x_label="x", y_label="y", y_ticks=[])
    bad = Series("b", (0.0, 1.0), (0.0, float("nan")), (0, 0, 0))
    with pytest.raises(ValueError, match="series 'b' to have as many finite x as y values"):
        line_chart([bad], title="t", x_label="x", y_label="y", y_ticks=[0.0, 1.0])
    far = Series("c", (0.0, 1.0), (0.0, 9.0), (0, 0, 0))  # beyond the ticks: at the edge
    chart = line_chart([far], title="t", x_label="x", y_label="y", y_ticks=[0.0, 1.0])
    assert chart.points[0][1][1] == chart.plot.y0


@pytest.mark.parametrize("concept", ["sky", "chest of drawers"])
def test_the_removal_chart_texts_lie_inside_the_chart_and_clear_of_the_plot(
    concept: str,
) -> None:
    curve = {"removed": [0.5, 0.7, 0.9], "random_mean": [0.0, 0.1, 0.2], "points": [1, 5, 10]}
    alpha = {"removed": [0.6, 0.8, 0.95], "points": [1, 5, 10]}
    numbers = {"removal": curve, "alpha_removal": alpha}
    chart = removal_chart(concept, numbers, "generator.layer3")
    pixels = chart.image()
    height, width = chart.pixels.shape[:2]
    whole, plot = Box(0, 0, width, height), chart.plot
    kinds = [kind for kind, _, _ in chart.texts]
    assert kinds.count("x tick") >= 2 and kinds.count("y tick") >= 2
    assert [text for kind, text, _ in chart.texts if kind == "title"] == [
        f"generator.layer3: {concept}"
    ]
    for kind, text, box in chart.texts:
        assert box.inside(whole), text
        if kind == "legend":  # in the plot's corner, on white
            assert box.inside(plot), text
            continue
        assert not box.overlaps(plot), text
        assert ink_inside(pixels, box), text  # the box holds the text, and only it
        if kind in ("x tick", "x label"):
            assert box.y0 >= plot.y1, text
        elif kind in ("y tick", "y label"):
            assert box.x1 <= plot.x0, text
        else:
            assert box.y1 <= plot.y0, text
    assert ("legend", "top units (α)") in [(k, t) for k, t, _ in chart.texts]
    # Every point is drawn where the curve says, inside the plot, in its line's colour.
    for series, points in zip(chart.series, chart.points, strict=True):
        assert [round(x) for x in series.xs] == [0, 1, 5, 10]
        for x, y in points:
            assert plot.x0 < x < plot.x1 and plot.y0 < y < plot.y1
        x, y = points[1]  # where no other line nor the legend lies
        assert tuple(int(v) for v in chart.pixels[y, x]) == series.colour
    ys = [y for _, y in chart.points[0]]
    assert ys == sorted(ys, reverse=True)  # higher share, higher on the chart


def _cap_of_first_line(image: Tensor) -> int:
    """Ink height of the first line of text: the title "HIH: ..." starts with capitals."""
    dark = (image < 0.5).all(dim=0)
    rows = dark[:, :18].any(dim=1)  # "HI": only capitals in the first columns
    first = rows.nonzero().flatten()
    end = int(first[0])
    while end < rows.shape[0] and rows[end]:
        end += 1
    return end - int(first[0])


@pytest.mark.parametrize("n_steps", [1, 6, 8, 16])
def test_the_unit_timeline_shows_at_actual_size_in_the_card_with_10_px_capitals(
    n_steps: int,
) -> None:
    from gan_dissect_callbacks.reporting.evolution import UnitTimeline, timeline_image

    steps = [500 * i for i in range(n_steps)]
    names = ["window", None, "cloud", "sky"]
    timeline = UnitTimeline(
        "HIH",
        steps,
        list(range(12)),
        [[0.02 * i] * n_steps for i in range(12)],
        [[names[i % 4]] * n_steps for i in range(12)],
    )
    image = timeline_image(timeline)
    assert image.shape[2] <= DISPLAY_WIDTH  # shown at actual size in the card
    assert _cap_of_first_line(image) == 10
    # the steps wrap into blocks of 4 ("window" at 10 px), each a header row and 12 unit rows,
    # under a title line and above a footer line; one step's table gives the line height
    one = timeline_image(UnitTimeline("HIH", [0], list(range(12)), [[0.1]] * 12, [["window"]] * 12))
    assert one.shape[1] % 15 == 0
    assert image.shape[1] == one.shape[1] // 15 * (2 + -(-n_steps // 4) * 13)


def test_a_timeline_column_wider_than_the_card_grows_its_letters_by_the_rule() -> None:
    from gan_dissect_callbacks.reporting.evolution import UnitTimeline, timeline_image

    timeline = UnitTimeline("HIH", [0, 500], [1], [[0.1, 0.2]], [["x" * 45] * 2])
    image = timeline_image(timeline)
    width = image.shape[2]
    assert width > DISPLAY_WIDTH
    cap = _cap_of_first_line(image)
    assert cap >= label_cap_height(width)
    assert shown_height(cap, width) >= 10 - 1e-9
    # a name too long to ever settle stops growing at twice the least size
    huge = timeline_image(UnitTimeline("HIH", [0], [1], [[0.1]], [["x" * 300]]))
    assert _cap_of_first_line(huge) == 20 and huge.shape[2] < 5000


def test_intervention_labels_naming_many_units_widen_the_grid_and_are_not_cut() -> None:
    g = torch.Generator().manual_seed(0)
    shots = {k: torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for k in GRID_KEYS}
    units = list(range(100, 120))
    grid = intervention_grid(shots, units=units)
    samples = 2 + 2 * (64 + 2)
    assert grid.shape[2] > samples
    dark = (grid < 0.5).all(dim=0)
    columns = dark.any(dim=0).nonzero().flatten()
    assert int(columns.max()) < grid.shape[2] - 1  # white after the last letter
    assert torch.all(grid[:, :, samples:][:, -64:] == 1.0)  # white right of the last samples
