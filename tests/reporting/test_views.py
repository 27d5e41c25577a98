"""Tests of the dissection views: overlays, galleries, the unit-class chart, tables, layouts."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import Tensor
from torch.utils.tensorboard.summary import image as tensorboard_image_summary

from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY, render_scenes
from gan_dissect_callbacks.engines.dissection import (
    DissectionReport,
    LayerReport,
    UnitExamples,
    UnitReport,
)
from gan_dissect_callbacks.reporting.charts import category_chart
from gan_dissect_callbacks.reporting.dissection import run_scalars, scalar_values, unit_galleries
from gan_dissect_callbacks.reporting.galleries import (
    GalleryRow,
    unit_gallery,
    unit_gallery_pixels,
    unit_overlay,
)
from gan_dissect_callbacks.reporting.images import (
    image_grid,
    label_cap_height,
    label_font,
    png_bytes,
    text_band,
    text_width,
    to_pixels,
    to_unit_range,
)
from gan_dissect_callbacks.reporting.layouts import (
    ACROSS_LAYERS,
    custom_scalars_layout,
    label_stability,
    layer_scalar_tags,
)
from gan_dissect_callbacks.reporting.tables import units_markdown
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

YELLOW = torch.tensor([1.0, 1.0, 0.0])
BLACK = torch.tensor([0.0, 0.0, 0.0])


def brute_force_contour(mask: Tensor) -> Tensor:
    """Region pixels with a 4-neighbour inside the image and outside the region, one by one."""
    height, width = mask.shape
    out = torch.zeros_like(mask)
    for i in range(height):
        for j in range(width):
            if not mask[i, j]:
                continue
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                y, x = i + di, j + dj
                if 0 <= y < height and 0 <= x < width and not mask[y, x]:
                    out[i, j] = True
    return out


def brute_force_ring(mask: Tensor) -> Tensor:
    """Pixels outside the region with a 4-neighbour inside it, one by one."""
    height, width = mask.shape
    out = torch.zeros_like(mask)
    for i in range(height):
        for j in range(width):
            if mask[i, j]:
                continue
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                y, x = i + di, j + dj
                if 0 <= y < height and 0 <= x < width and mask[y, x]:
                    out[i, j] = True
    return out


def random_images(n: int, size: int = 8, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def unit(index: int, concept: str, iou: float = 0.2, interpretable: bool = True) -> UnitReport:
    category = SCENE_VOCABULARY.category_of(concept) if concept in SCENE_VOCABULARY.names else "x"
    return UnitReport(index, concept, category, iou, 1.0 + index, 0.1, interpretable)


# --------------------------------------------------------------------------------- overlay


def test_overlay_darkens_outside_keeps_inside_and_paints_the_contour_yellow_ringed_black() -> None:
    images = random_images(2, size=6)
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[0, 1:5, 1:5] = True  # a 4×4 square: its ring is the contour, 2×2 interior kept
    masks[1, 2, 0:4] = True  # a 1-pixel line: all contour
    out = unit_overlay(images, masks)
    x = to_unit_range(images)

    assert out.shape == (2, 3, 6, 6)
    assert out.dtype == torch.float32
    black = torch.zeros(2, 6, 6, dtype=torch.bool)
    black[0, 0, 1:5] = black[0, 5, 1:5] = black[0, 1:5, 0] = black[0, 1:5, 5] = True
    black[1, 1, 0:4] = black[1, 3, 0:4] = True
    black[1, 2, 4] = True
    far = (~masks & ~black).unsqueeze(1).expand_as(x)
    assert torch.equal(out[far], x[far] * 0.5)
    assert torch.equal(out.permute(0, 2, 3, 1)[black], BLACK.expand(int(black.sum()), 3))
    assert torch.equal(out[0, :, 2:4, 2:4], x[0, :, 2:4, 2:4])
    ring = masks[0].clone()
    ring[2:4, 2:4] = False
    assert torch.equal(out[0].permute(1, 2, 0)[ring], YELLOW.expand(12, 3))
    assert torch.equal(out[1].permute(1, 2, 0)[masks[1]], YELLOW.expand(4, 3))


def test_overlay_of_an_empty_mask_is_the_image_at_half_brightness() -> None:
    images = random_images(3)
    out = unit_overlay(images, torch.zeros(3, 8, 8, dtype=torch.bool))
    assert torch.equal(out, to_unit_range(images) * 0.5)


def test_the_image_edge_is_not_a_contour() -> None:
    images = random_images(1)
    assert torch.equal(
        unit_overlay(images, torch.ones(1, 8, 8, dtype=torch.bool)), to_unit_range(images)
    )
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :, :4] = True  # left half: contour only along column 3
    out = unit_overlay(images, masks)
    assert torch.equal(out[0, :, :, 3], YELLOW.view(3, 1).expand(3, 8))
    assert torch.equal(out[0, :, :, 4], BLACK.view(3, 1).expand(3, 8))
    assert torch.equal(out[0, :, :, :3], to_unit_range(images)[0, :, :, :3])


@settings(max_examples=40, deadline=None)
@given(
    bits=st.lists(st.booleans(), min_size=2 * 5 * 7, max_size=2 * 5 * 7),
    seed=st.integers(0, 2**16),
)
def test_overlay_matches_a_pixel_by_pixel_reference(bits: list[bool], seed: int) -> None:
    masks = torch.tensor(bits).view(2, 5, 7)
    images = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    out = unit_overlay(images, masks)
    x = to_unit_range(images)
    for n in range(2):
        contour = brute_force_contour(masks[n])
        expected = torch.where(masks[n], x[n], x[n] * 0.5)
        expected[:, brute_force_ring(masks[n])] = BLACK.view(3, 1)
        expected[:, contour] = YELLOW.view(3, 1)
        assert torch.equal(out[n], expected)


def test_overlay_rejects_bad_input_with_a_message_naming_the_argument() -> None:
    images = random_images(2)
    with pytest.raises(ValueError, match=r"`images` to be a tensor of shape \[N, 3, H, W\]"):
        unit_overlay(images[:, :1], torch.zeros(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`masks` to be a bool tensor, but got torch.float32"):
        unit_overlay(images, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"`masks` to have shape \[N, H, W\] = \[2, 8, 8\]"):
        unit_overlay(images, torch.zeros(2, 8, 7, dtype=torch.bool))


# --------------------------------------------------------------------------------- gallery


def scene_row(title: str, k: int, concept: str = "sky", size: int = 32) -> GalleryRow:
    images, masks = render_scenes(k, size=size, generator=torch.Generator().manual_seed(k))
    return GalleryRow(title, images, masks[:, SCENE_VOCABULARY.index(concept)])


def test_gallery_shape_arithmetic() -> None:
    row = scene_row("layer3 #12 window IoU 0.23", 4)
    one = unit_gallery([row], scale=2)
    three = unit_gallery([row, row, row], scale=2)
    bigger = unit_gallery([row], scale=3)

    assert one.shape[0] == 3
    assert one.shape[2] == three.shape[2] == 2 + 4 * (64 + 2)
    assert bigger.shape[2] == 2 + 4 * (96 + 2)
    assert three.shape[1] == 3 * one.shape[1]
    title_height = one.shape[1] - (64 + 4)
    assert 8 <= title_height <= 30
    assert bigger.shape[1] - (96 + 4) >= title_height  # a wider image gets taller letters
    assert one.min() >= 0 and one.max() <= 1
    default = unit_gallery([row])  # 32-px samples are enlarged to 96 px
    assert default.shape[2] == bigger.shape[2] and torch.equal(default, bigger)


def test_gallery_cells_are_the_nearest_neighbour_enlarged_overlays() -> None:
    rows = [scene_row("sky", 3, "sky"), scene_row("house", 2, "house")]
    gallery = unit_gallery(rows, scale=2)
    block = gallery.shape[1] // 2
    title_height = block - (64 + 4)
    for r, row in enumerate(rows):
        big_images = row.images.repeat_interleave(2, 2).repeat_interleave(2, 3)
        big_masks = row.masks.repeat_interleave(2, 1).repeat_interleave(2, 2)
        # ... in the 8-bit colours TensorBoard stores
        expected = to_pixels(unit_overlay(big_images, big_masks)).float() / 255
        top = r * block + title_height + 2
        for i in range(len(row.images)):
            left = 2 + i * 66
            assert torch.equal(gallery[:, top : top + 64, left : left + 64], expected[i])
    # the narrower second row is padded with white to the gallery's width
    top = block + title_height
    assert torch.all(gallery[:, top:, 2 + 2 * 66 :] == 1.0)


def test_gallery_contour_stays_one_pixel_thin_after_enlarging() -> None:
    images = torch.zeros(1, 3, 4, 4)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 1:4, 1:4] = True
    gallery = unit_gallery([GalleryRow("", images, masks)], scale=2)
    cell = gallery[:, -2 - 8 : -2, 2:10]  # the single 8×8 cell at the bottom-left
    yellow = (cell == YELLOW.view(3, 1, 1)).all(dim=0)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2, 2:] = True
    expected[2:, 2] = True
    assert torch.equal(yellow, expected)


def test_gallery_writes_the_title_and_widens_for_long_titles() -> None:
    images = torch.ones(1, 3, 8, 8)
    masks = torch.ones(1, 8, 8, dtype=torch.bool)
    untitled = unit_gallery([GalleryRow("", images, masks)], scale=1)
    titled = unit_gallery([GalleryRow("layer3 #12 window IoU 0.23", images, masks)], scale=1)
    title_height = untitled.shape[1] - (8 + 4)

    assert untitled.shape == (3, untitled.shape[1], 2 + 8 + 2)
    assert torch.all(untitled == 1.0)  # white images, no text: nothing dark anywhere
    assert titled.shape[1] == untitled.shape[1]
    assert titled.shape[2] > 100  # the text does not fit in one 8-px cell, the image widens
    ink = (titled[:, :title_height] < 0.5).all(dim=0)
    assert ink.any()
    columns = ink.any(dim=0).nonzero()
    assert columns.min() >= 2 and columns.max() <= titled.shape[2] - 3  # within the padding
    assert torch.all(titled[:, title_height:] == 1.0)  # white image (no contour), white padding


def test_gallery_without_rows_says_so() -> None:
    gallery = unit_gallery([])
    assert gallery.shape[0] == 3 and gallery.shape[2] > 50
    assert (gallery < 0.5).any()


def test_gallery_rejects_bad_input() -> None:
    row = scene_row("a", 1)
    for scale in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"`scale` to be None or an integer ≥ 1"):
            unit_gallery([row], scale=scale)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"GalleryRow objects, but row 1 is tuple"):
        unit_gallery([row, ("a", row.images, row.masks)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"at least one image in the gallery row 'empty'"):
        GalleryRow("empty", torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`masks` to have shape"):
        GalleryRow("bad", torch.zeros(2, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))


def test_unit_galleries_draw_the_examples_the_report_carries() -> None:
    units = [unit(0, "sky", 0.31), unit(1, "tree", 0.05, interpretable=False), unit(2, "sun")]
    layer = LayerReport("g.l3", 3, units, [])
    images = random_images(4, size=8, seed=1)
    examples = [
        UnitExamples(0, images[:2], images[:2, 0] > 0),
        UnitExamples(1, images[2:], images[2:, 1] > 0),
    ]
    report = DissectionReport(
        {"g.l3": layer, "g.l4": LayerReport("g.l4", 0, [], [])}, SCENE_VOCABULARY, 8, 0,
        "quantile", 0.99, 0.04, [], examples={"g.l3": examples},
    )  # fmt: skip
    galleries = unit_galleries(report, rows_per_page=None)
    assert list(galleries) == ["g.l3"]  # a layer without examples has no gallery
    rows = [
        GalleryRow("g.l3 #0 sky IoU 0.31", images[:2], images[:2, 0] > 0),
        GalleryRow("g.l3 #1 (tree) IoU 0.05", images[2:], images[2:, 1] > 0),
    ]
    assert len(galleries["g.l3"]) == 1
    assert torch.equal(galleries["g.l3"][0], unit_gallery(rows))
    pages = unit_galleries(report, rows_per_page=1)["g.l3"]  # a page per unit, in order
    assert len(pages) == 2
    assert all(torch.equal(p, unit_gallery([r])) for p, r in zip(pages, rows, strict=True))
    assert unit_galleries(DissectionReport.from_json(report.to_json())) == {}


def float_gallery(rows: list[GalleryRow], scale: int) -> Tensor:
    """The gallery composed in floats, step by step as the docstring says: the reference."""
    grids = []
    for row in rows:
        images = row.images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        masks = row.masks.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        overlay = unit_overlay(images, masks)
        grids.append(image_grid(overlay, nrow=len(overlay), padding=2, signed=False))
    width = max(g.shape[2] for g in grids)
    font = label_font(label_cap_height(width))
    width = max(width, max(text_width(r.title, font) for r in rows) + 4)
    blocks = []
    for row, grid in zip(rows, grids, strict=True):
        blocks.append(text_band(row.title, width, font))
        pad = torch.ones(3, grid.shape[1], width - grid.shape[2])
        blocks.append(torch.cat([grid, pad], dim=2))
    return torch.cat(blocks, dim=1)


def tensorboard_pixels(image: Tensor) -> np.ndarray:
    """What ``SummaryWriter.add_image`` stores for a float ``[3, H, W]`` image, decoded."""
    png = tensorboard_image_summary("t", image, dataformats="CHW").value[0].image
    return np.asarray(Image.open(io.BytesIO(png.encoded_image_string)).convert("RGB"))


def test_gallery_pixels_are_the_float_gallery_as_tensorboard_stores_it() -> None:
    rows = [
        scene_row("layer3 #12 window IoU 0.23", 3, "sky"),
        scene_row("a title much wider than the two small samples of its row", 2, "house", 16),
        GalleryRow("", random_images(1, 16, seed=4), random_images(1, 16, seed=5)[:, 0] > 0),
    ]
    for scale in (1, 2, 3):
        pixels = unit_gallery_pixels(rows, scale=scale)
        reference = float_gallery(rows, scale)
        assert pixels.dtype == np.uint8 and pixels.shape == (*reference.shape[1:], 3)
        assert np.array_equal(pixels, tensorboard_pixels(reference))
        assert torch.equal(
            unit_gallery(rows, scale=scale), torch.from_numpy(pixels).permute(2, 0, 1) / 255
        )
    empty = unit_gallery_pixels([])
    assert np.array_equal(empty, tensorboard_pixels(unit_gallery([])))


def test_to_pixels_is_tensorboards_conversion_of_float_images() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 9, 11, generator=g) * 1.4 - 0.2  # out of range too: clipped
    image[0, 0, :4] = torch.tensor([0.0, 1.0, 0.5, 200 / 255])
    assert np.array_equal(to_pixels(image).permute(1, 2, 0).numpy(), tensorboard_pixels(image))
    steps = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_pixels(steps.float() / 255), steps)  # 8-bit colours come back


@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_png_bytes_decode_to_the_very_pixels(height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    pixels[: height // 2] = pixels[:1]  # repeated rows, as in enlarged samples
    decoded = Image.open(io.BytesIO(png_bytes(pixels)))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), pixels)
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(png_bytes(torch.from_numpy(pixels))))), pixels
    )


def test_png_bytes_rejects_other_arrays_with_a_message_naming_the_argument() -> None:
    for bad in (np.zeros((4, 4, 3)), np.zeros((4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"`pixels` to be a \[H, W, 3\] uint8 array"):
            png_bytes(bad)


# --------------------------------------------------------------------------------- chart


def chart_layer() -> LayerReport:
    labels = ["sky", "house", "sky", "window", "grass", "sky", "door", "window", "cloud"]
    units = [unit(i, c, iou=0.1 + 0.01 * i) for i, c in enumerate(labels)]
    units += [unit(len(units), "tree", iou=0.01, interpretable=False)]  # not counted
    return LayerReport("generator.layer3", len(units), units, [])


def colour_at(pixels, box) -> tuple[int, ...]:
    """The colour at the middle of a box of the chart's pixels."""
    return tuple(int(v) for v in pixels[(box.y0 + box.y1) // 2, (box.x0 + box.x1) // 2])


def test_chart_has_a_bar_per_concept_sorted_within_category_and_coloured_by_it() -> None:
    chart = category_chart(chart_layer(), SCENE_VOCABULARY)
    assert [b.concept for b in chart.bars] == ["sky", "cloud", "house", "window", "door", "grass"]
    assert [b.units for b in chart.bars] == [3, 1, 1, 2, 1, 1]
    colours = [colour_at(chart.pixels, b.box) for b in chart.bars]  # as drawn
    assert colours == [b.colour for b in chart.bars]
    assert colours[0] == colours[1] == colours[2]
    assert colours[3] == colours[4]
    assert len({colours[0], colours[3], colours[5]}) == 3
    assert chart.legend == (
        ("object: 5 units", colours[0]),
        ("part: 3 units", colours[3]),
        ("material: 1 unit", colours[5]),
    )
    assert chart.title == "generator.layer3: 10 units, 5 object, 3 part, 1 material"
    # Heights in proportion to the units, from one floor.
    heights = [b.box.y1 - b.box.y0 for b in chart.bars]
    assert heights[1] == heights[2] == heights[4] == heights[5]
    assert abs(heights[0] - 3 * heights[1]) <= 2 and abs(heights[3] - 2 * heights[1]) <= 2
    names = [text for kind, text, _ in chart.texts if kind == "x tick"]
    assert names == [b.concept for b in chart.bars]


def test_chart_puts_categories_unknown_to_the_vocabulary_last() -> None:
    units = [unit(0, "red"), unit(1, "red"), unit(2, "sky")]  # "red" has category "x"
    chart = category_chart(LayerReport("l", 3, units, []), SCENE_VOCABULARY)
    assert [(b.concept, b.units) for b in chart.bars] == [("sky", 1), ("red", 2)]
    assert [text for text, _ in chart.legend] == ["object: 1 unit", "x: 2 units"]


def test_chart_of_a_layer_without_interpretable_units_says_so() -> None:
    layer = LayerReport("l", 2, [unit(0, "sky", 0.01, False), unit(1, "sun", 0.0, False)], [])
    chart = category_chart(layer, SCENE_VOCABULARY)
    assert chart.bars == () and chart.legend == ()
    assert [text for kind, text, _ in chart.texts if kind == "note"] == ["no interpretable units"]
    assert chart.pixels.shape == (320, 400, 3)


def test_chart_widens_with_its_bars_and_is_drawn_once_per_data() -> None:
    vocab = ConceptVocabulary.from_pairs([(f"c{i}", "object") for i in range(20)])
    units = [unit(i, f"c{i}") for i in range(20)]
    chart = category_chart(LayerReport("l", 20, units, []), vocab)
    assert chart.pixels.shape == (320, 150 + 30 * 20, 3)
    same = LayerReport("l", 20, list(units), [])
    assert category_chart(same, vocab) is chart  # not drawn again
    assert not chart.pixels.flags.writeable  # shared, so nobody may paint on it
    assert torch.equal(chart.image(), torch.from_numpy(chart.pixels.copy()).permute(2, 0, 1) / 255)


# --------------------------------------------------------------------------------- markdown


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ")][1:]  # skip the header


def test_markdown_lists_interpretable_units_best_first() -> None:
    layer = chart_layer()
    text = units_markdown(layer, categories=SCENE_VOCABULARY.categories)
    rows = table_rows(text)
    assert len(rows) == 9
    assert rows[0] == "| 8 | cloud | object | 0.180 | 9 | 0.100 |"
    assert rows[-1] == "| 0 | sky | object | 0.100 | 1 | 0.100 |"
    assert "tree" not in text
    assert text.endswith(
        "**generator.layer3**: 9 of 10 units interpretable: 5 object, 3 part, 1 material."
    )


def test_markdown_truncates_to_max_rows_and_says_how_many_are_left() -> None:
    text = units_markdown(chart_layer(), max_rows=4)
    assert [r.split(" | ")[0] for r in table_rows(text)] == ["| 8", "| 7", "| 6", "| 5"]
    assert "…and 5 more interpretable units." in text
    assert "…and 1 more interpretable unit." in units_markdown(chart_layer(), max_rows=8)
    assert "more interpretable" not in units_markdown(chart_layer(), max_rows=9)


def test_markdown_escapes_pipes_and_renders_as_a_table_in_tensorboard() -> None:
    from tensorboard import plugin_util

    units = [
        UnitReport(3, "a|b", "odd|cat", 0.5, 0.25, 0.3, True),
        UnitReport(1, "sky", "object", 0.4, 0.5, 0.2, True),
    ]
    text = units_markdown(LayerReport("gen|l", 4, units, []))
    assert "| 3 | a\\|b | odd\\|cat | 0.500 | 0.25 | 0.300 |" in text
    html = plugin_util.markdown_to_safe_html(text)
    assert html.count("<tr>") == 3  # header + 2 units
    assert html.count("<td>") == 12  # 6 columns each: no extra cell from the pipes
    assert "<td>a|b</td>" in html and "<td>odd|cat</td>" in html
    assert "gen|l" in html


def test_markdown_of_a_layer_without_interpretable_units() -> None:
    layer = LayerReport("l", 2, [unit(0, "sky", 0.01, False)], [])
    assert units_markdown(layer, categories=("object", "part")) == (
        "No interpretable units.\n\n**l**: 0 of 2 units interpretable: 0 object, 0 part."
    )
    assert units_markdown(layer).endswith("**l**: 0 of 2 units interpretable.")


@pytest.mark.parametrize("max_rows", [0, -1, 2.5, True])
def test_markdown_rejects_bad_max_rows(max_rows: object) -> None:
    with pytest.raises(ValueError, match=r"`max_rows` to be an integer ≥ 1"):
        units_markdown(chart_layer(), max_rows=max_rows)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- layout


def matched(patterns: list[str], tags: list[str]) -> set[str]:
    # TensorBoard's custom-scalars plugin searches tags with these regular expressions.
    return {t for t in tags if any(re.search(p, t) for p in patterns)}


def test_layout_charts_one_line_per_layer_run_and_one_per_category_run() -> None:
    layers = ["generator.layer1", "generator.layer10", "generatorXlayer1"]
    categories = ["object", "part", "material"]
    layout = custom_scalars_layout(layers, categories)
    summary = {
        "layers": {
            layer: {
                "interpretable_units": {c: i + j for j, c in enumerate(categories)},
                "total": 3 * i + 3,
                "distinct_concepts": i,
                "label_stability": 0.5,
                "mean_best_iou": 0.1 * i,
            }
            for i, layer in enumerate(layers)
        }
    }
    runs = run_scalars(summary, categories)
    decoys = ["dissection/generator.layer1/interpretable_units/object_part"]
    assert set(runs) == {f"dissection/{n}" for n in layers} | {
        f"dissection/categories/{c}" for c in [*categories, "total"]
    }

    assert list(layout) == ["dissection (all layers)"] + [f"dissection: {n}" for n in layers]
    across = layout["dissection (all layers)"]
    assert list(across) == list(ACROSS_LAYERS)
    for chart in ACROSS_LAYERS:
        kind, patterns = across[chart]
        assert kind == "Multiline"
        lines = {run for run, scalars in runs.items() if matched(patterns, [*scalars, *decoys])}
        assert lines == {f"dissection/{n}" for n in layers}  # one line (run) per layer
    for i, layer in enumerate(layers):
        kind, patterns = layout[f"dissection: {layer}"]["interpretable units by category"]
        assert kind == "Multiline"
        values = {
            run: scalars[tag]
            for run, scalars in runs.items()
            for tag in matched(patterns, [*scalars, *decoys])
        }
        assert values == {
            **{f"dissection/categories/{c}": float(i + j) for j, c in enumerate(categories)},
            "dissection/categories/total": float(3 * i + 3),
        }
    charted = {
        (run, t)
        for section in layout.values()
        for _, ps in section.values()
        for run, scalars in runs.items()
        for t in matched(ps, list(scalars))
    }
    layer_keys = [f"interpretable_units/{c}" for c in categories]
    uncharted = {(f"dissection/{n}", f"dissection/{k}") for n in layers for k in layer_keys}
    assert charted == {(r, t) for r, s in runs.items() for t in s} - uncharted


def test_run_scalars_hold_the_same_numbers_as_the_main_run() -> None:
    summary = {
        "layers": {
            "g.l3": {
                "interpretable_units": {"object": 2, "part": 1},
                "total": 3,
                "distinct_concepts": 2,
                "label_stability": None,
                "mean_best_iou": 0.25,
            }
        }
    }
    main = scalar_values(summary, ["object", "part"])
    runs = run_scalars(summary, ["object", "part"])
    layer = runs["dissection/g.l3"]
    assert {t.replace("dissection/", "dissection/g.l3/", 1): v for t, v in layer.items()} == main
    assert "dissection/label_stability" not in layer  # unknown at the first dissection: no point
    assert runs["dissection/categories/part"] == {"dissection/g.l3/interpretable_units": 1.0}


def test_scalar_tags_follow_the_callback_scheme() -> None:
    assert list(layer_scalar_tags("g.l3", ["object"]).values()) == [
        "dissection/g.l3/interpretable_units/object",
        "dissection/g.l3/interpretable_units/total",
        "dissection/g.l3/distinct_concepts",
        "dissection/g.l3/label_stability",
        "dissection/g.l3/mean_best_iou",
    ]


def test_a_named_dissection_has_its_own_tags_and_layout_sections() -> None:
    tags = layer_scalar_tags("g.l3", ["object"], prefix="dissection_ema")
    assert tags["distinct_concepts"] == "dissection_ema/g.l3/distinct_concepts"
    layout = custom_scalars_layout(["g.l3"], ["object"], prefix="dissection_ema")
    assert list(layout) == ["dissection_ema (all layers)", "dissection_ema: g.l3"]
    patterns = layout["dissection_ema: g.l3"]["interpretable units by category"][1]
    assert matched(patterns, ["dissection/g.l3/interpretable_units"]) == set()
    assert matched(patterns, ["dissection_ema/g.l3/interpretable_units"])
    with pytest.raises(ValueError, match=r"`prefix` to be a sequence of non-empty strings"):
        layer_scalar_tags("g.l3", ["object"], prefix="")


def test_layout_is_accepted_by_summary_writer(tmp_path: object) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2
    from torch.utils.tensorboard import SummaryWriter

    layout = custom_scalars_layout(["a", "b"], ["object", "part"])
    writer = SummaryWriter(str(tmp_path))
    writer.add_custom_scalars(layout)
    writer.close()
    (path,) = list(tmp_path.glob("events.out.tfevents.*"))  # type: ignore[attr-defined]
    protos = [
        value.tensor.string_val[0]
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
        if value.tag == "custom_scalars__config__"
    ]
    read = layout_pb2.Layout.FromString(protos[0])
    assert {
        c.title: {ch.title: ["Multiline", list(ch.multiline.tag)] for ch in c.chart}
        for c in read.category
    } == layout


def test_layout_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match=r"`layers` to be a sequence of non-empty strings"):
        custom_scalars_layout("layer3", ["object"])
    with pytest.raises(ValueError, match=r"at least one name in `layers`"):
        custom_scalars_layout([], ["object"])
    with pytest.raises(ValueError, match=r"unique names in `layers`, but got repeated \['a'\]"):
        custom_scalars_layout(["a", "b", "a"], ["object"])
    with pytest.raises(ValueError, match=r"`categories` to be a sequence of non-empty strings"):
        custom_scalars_layout(["a"], ["object", ""])
    with pytest.raises(ValueError, match=r"no category called 'total'"):
        custom_scalars_layout(["a"], ["object", "total"])


# --------------------------------------------------------------------------------- stability


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (["sky", "tree", None, "door"], ["sky", "house", "sun", None], 1 / 3),
        (["sky", "tree"], ["sky", "tree"], 1.0),
        (["sky", "tree"], ["tree", "sky"], 0.0),
        (["sky", None, None, None], ["sky", "a", "b", "c"], 1.0),  # newcomers do not count
        (["sky", "sky", "sky", "sky"], ["sky", None, "sky", "cloud"], 0.5),
        ([None, None], ["sky", None], None),
        ([], [], None),
    ],
)
def test_label_stability_exact_values(
    previous: list[str | None], current: list[str | None], expected: float | None
) -> None:
    assert label_stability(previous, current) == expected


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from([None, "a", "b", "c"]), st.sampled_from([None, "a", "b", "c"])),
        max_size=20,
    )
)
def test_label_stability_counts_kept_labels_of_previously_labelled_units(
    pairs: list[tuple[str | None, str | None]],
) -> None:
    previous = [p for p, _ in pairs]
    current = [c for _, c in pairs]
    labelled = sum(p is not None for p in previous)
    kept = sum(p is not None and p == c for p, c in pairs)
    result = label_stability(previous, current)
    if labelled == 0:
        assert result is None
    else:
        assert result == kept / labelled
        assert label_stability(previous, previous) == 1.0


def test_label_stability_rejects_lists_of_different_units() -> None:
    with pytest.raises(ValueError, match=r"same units, but got 3 and 2 labels"):
        label_stability(["a", None, "b"], ["a", None])
