"""The paper's unit gallery: top-activating samples with the unit's region highlighted.

- :func:`unit_overlay`: everything outside the thresholded region darkened (×0.5) and a thin
  yellow contour around it, itself ringed in black so that it shows on light concepts too;
- :func:`unit_gallery`: one titled row per unit (a :class:`GalleryRow`), ready for
  ``SummaryWriter.add_image``; samples enlarged to at least :data:`MIN_TILE_SIDE` pixels and
  titles sized by :func:`~gan_dissect_callbacks.reporting.images.label_cap_height`, so they
  stay legible when TensorBoard shrinks the image to its card; :func:`unit_gallery_pixels`
  gives the same image as the 8-bit pixels TensorBoard stores, ready for a PNG file.

Pure rendering: tensors in, an image tensor in ``[0, 1]`` out; nothing here writes to a logger.

Example:
    >>> import torch
    >>> images = torch.zeros(1, 3, 4, 4)  # mid-grey in [-1, 1]
    >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    >>> masks[0, 1:4, 1:4] = True
    >>> overlay = unit_overlay(images, masks)
    >>> overlay[0, 0]  # red: darkened outside, black ring, yellow (1) contour, kept inside
    tensor([[0.2500, 0.0000, 0.0000, 0.0000],
            [0.0000, 1.0000, 1.0000, 1.0000],
            [0.0000, 1.0000, 0.5000, 0.5000],
            [0.0000, 1.0000, 0.5000, 0.5000]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from gan_dissect_callbacks.reporting.images import (
    from_pixels,
    label_cap_height,
    label_font,
    text_band_pixels,
    text_width,
    to_pixels,
    to_unit_range,
)

__all__ = ["GalleryRow", "unit_gallery", "unit_gallery_pixels", "unit_overlay"]

#: How much the pixels outside a unit's region are dimmed (the paper's galleries: ×0.5).
OUTSIDE_BRIGHTNESS = 0.5
#: Colour of the region's contour, RGB in ``[0, 1]``.
CONTOUR_COLOUR = (1.0, 1.0, 0.0)
#: Colour of the ring just outside the contour: the yellow line vanishes on yellow and white
#: concepts (sun, cloud), a black one on dark ones; side by side one of the two always shows.
OUTLINE_COLOUR = (0.0, 0.0, 0.0)
#: Gallery samples smaller than this (pixels) are enlarged by an integer factor (nearest).
MIN_TILE_SIDE = 96

_CONTOUR_PIXEL = to_pixels(torch.tensor(CONTOUR_COLOUR)).numpy()  # as TensorBoard stores them
_OUTLINE_PIXEL = to_pixels(torch.tensor(OUTLINE_COLOUR)).numpy()
_PADDING = 2  # pixels between gallery images, and around titles
_BACKGROUND = 255  # white padding


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


_Pixels = TypeVar("_Pixels", Tensor, np.ndarray)
#: A boolean mask, as a tensor (:func:`unit_overlay`) or an array (:func:`unit_gallery_pixels`).
_Mask = TypeVar("_Mask", Tensor, np.ndarray)


def _region_contour(masks: _Mask) -> _Mask:
    """Region pixels with at least one 4-neighbour outside the region.

    Neighbours beyond the image edge count as inside: the contour marks where a region ends
    within the picture, not the picture's frame.
    """
    inner = masks & masks  # a copy, for tensors and arrays alike
    inner[:, 1:, :] &= masks[:, :-1, :]
    inner[:, :-1, :] &= masks[:, 1:, :]
    inner[:, :, 1:] &= masks[:, :, :-1]
    inner[:, :, :-1] &= masks[:, :, 1:]
    return masks & ~inner


def _outer_ring(masks: _Mask) -> _Mask:
    """Pixels outside the region with at least one 4-neighbour inside it."""
    grown = masks | masks  # a copy
    grown[:, 1:, :] |= masks[:, :-1, :]
    grown[:, :-1, :] |= masks[:, 1:, :]
    grown[:, :, 1:] |= masks[:, :, :-1]
    grown[:, :, :-1] |= masks[:, :, 1:]
    return grown & ~masks


def unit_overlay(images: Tensor, masks: Tensor) -> Tensor:
    """Show where a unit fires: dim everything outside its region and outline the region.

    Pixels outside the mask are multiplied by :data:`OUTSIDE_BRIGHTNESS` (0.5); the region's
    boundary pixels (region pixels with a 4-neighbour outside it; the image edge does not count
    as outside) are painted :data:`CONTOUR_COLOUR` (yellow), and the pixels just outside it
    (outside pixels with a 4-neighbour in the region) :data:`OUTLINE_COLOUR` (black), so the
    outline shows on any colour; the rest of the region is unchanged.

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
        >>> unit_overlay(torch.ones(1, 3, 3, 3), masks)[0, 0]  # red channel of white images
        tensor([[0.5000, 0.0000, 0.5000],
                [0.0000, 1.0000, 0.0000],
                [0.5000, 0.0000, 0.5000]])
    """
    _check_images_and_masks(images, masks)
    x = to_unit_range(images).permute(0, 2, 3, 1)  # channel-last: a pixel is one index
    masks = masks.to(x.device)
    outlined = torch.where(masks.unsqueeze(-1), x, x * OUTSIDE_BRIGHTNESS)
    colour = torch.tensor(CONTOUR_COLOUR, dtype=x.dtype, device=x.device)
    dark = torch.tensor(OUTLINE_COLOUR, dtype=x.dtype, device=x.device)
    return _paint_outline(outlined, masks, colour, dark).permute(0, 3, 1, 2).contiguous()


def _paint_outline(pixels: _Pixels, masks: Any, colour: Any, dark: Any) -> _Pixels:
    """Paint the ring ``dark`` and the contour ``colour`` into ``[N, H, W, 3]`` ``pixels``.

    In place, tensors of floats and arrays of 8-bit pixels alike (``masks``: ``[N, H, W]``,
    ``colour`` and ``dark``: ``[3]``, of the same kind).
    """
    pixels[_outer_ring(masks)] = dark
    pixels[_region_contour(masks)] = colour
    return pixels


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


def unit_gallery(rows: Sequence[GalleryRow], *, scale: int | None = None) -> Tensor:
    """Tile units' overlays into one image: one row per unit, its title written above the row.

    Each row's images and masks are enlarged ``scale`` times (nearest neighbour; by default the
    least integer that makes the smallest sample side ≥ :data:`MIN_TILE_SIDE`, 96 px), then
    drawn with :func:`unit_overlay` (so the contour stays 1 pixel thin at the enlarged size).
    Rows are separated by a white padding of 2 pixels. With ``n`` rows of ``k_i`` images of
    ``H_i × W_i`` pixels the image is ``W = max_i (2 + k_i·(scale·W_i + 2))`` wide (wider if a
    title needs it) and ``Σ_i (T + scale·H_i + 4)`` tall, where ``T`` is a title's line height.
    Titles' capital letters are
    ``label_cap_height(W)`` pixels tall
    (:func:`~gan_dissect_callbacks.reporting.images.label_cap_height`), so
    they stay ≥ 10 px when TensorBoard's card shows the image 350 px wide. With no rows the
    image just says "no units to show".

    The image is made of 8-bit colours (:func:`unit_gallery_pixels` ``/ 255``): each overlay
    pixel is the one TensorBoard stores for it
    (:func:`~gan_dissect_callbacks.reporting.images.to_pixels`).

    Args:
        rows: the units to show, top to bottom.
        scale: integer enlargement factor (≥ 1); ``None``: up to :data:`MIN_TILE_SIDE`.

    Returns:
        ``[3, H', W']`` float image in ``[0, 1]`` on the CPU, for ``SummaryWriter.add_image``.

    Raises:
        ValueError: if ``scale`` is not a positive integer or a row is not a :class:`GalleryRow`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
        >>> row = GalleryRow("layer3 #12 window IoU 0.23", images, images[:, 0] > 0)
        >>> gallery = unit_gallery([row, row])
        >>> gallery.shape[0], gallery.shape[2]  # width: 2 + 4 * (3 * 32 + 2)
        (3, 394)
        >>> bool(gallery.min() >= 0 and gallery.max() <= 1)
        True
    """
    return from_pixels(unit_gallery_pixels(rows, scale=scale))


def unit_gallery_pixels(rows: Sequence[GalleryRow], *, scale: int | None = None) -> np.ndarray:
    """:func:`unit_gallery` as ``[H', W', 3]`` uint8 pixels, ready for a PNG file.

    The overlay's two colours of each sample pixel (kept, dimmed) are converted to 8 bits
    before enlarging, where there are ``scale²`` times fewer of them; the conversion is per
    pixel, so the result is the enlarged overlay's conversion exactly.

    Example:
        >>> import torch
        >>> masks = torch.zeros(1, 2, 2, dtype=torch.bool)
        >>> masks[0, 0, 0] = True  # mid-grey sample: yellow contour, black ring, dimmed grey
        >>> pixels = unit_gallery_pixels([GalleryRow("", torch.zeros(1, 3, 2, 2), masks)], scale=1)
        >>> pixels[-4:-2, 2:4, 0].tolist(), pixels.dtype.name
        ([[255, 0], [0, 63]], 'uint8')
    """
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or scale < 1):
        raise ValueError(
            f"Expected argument `scale` to be None or an integer ≥ 1, but got {scale!r}."
        )
    for i, row in enumerate(rows):
        if not isinstance(row, GalleryRow):
            raise ValueError(
                f"Expected `rows` to hold GalleryRow objects, but row {i} is {type(row).__name__}."
            )
    if not rows:
        text = "no units to show"
        font = label_font(label_cap_height(0))
        return text_band_pixels(text, text_width(text, font) + 2 * _PADDING, font, padding=_PADDING)

    if scale is None:
        smallest = min(min(row.images.shape[-2:]) for row in rows)
        scale = max(1, math.ceil(MIN_TILE_SIDE / max(1, smallest)))
    cells = [_overlay_pixels(row, scale) for row in rows]  # [k, H, W, 3] each
    grid_widths = [_PADDING + len(c) * (c.shape[2] + _PADDING) for c in cells]
    font = label_font(label_cap_height(max(grid_widths)))
    # A title wider than the images widens the image; its letters then keep their share of it.
    width = max(max(grid_widths), max(text_width(row.title, font) for row in rows) + 2 * _PADDING)
    bands = [text_band_pixels(row.title, width, font, padding=_PADDING) for row in rows]
    heights = [
        band.shape[0] + c.shape[1] + 2 * _PADDING for band, c in zip(bands, cells, strict=True)
    ]
    canvas = np.full((sum(heights), width, 3), _BACKGROUND, dtype=np.uint8)
    top = 0
    for band, cell, height in zip(bands, cells, heights, strict=True):
        canvas[top : top + band.shape[0]] = band
        k, h, w, _ = cell.shape
        y = top + band.shape[0] + _PADDING
        # The row's k cells side by side, each followed by its padding: one strided copy (the
        # reshape only splits an axis, so it is a view of the canvas).
        strip = canvas[y : y + h, _PADDING : _PADDING + k * (w + _PADDING)]
        strip.reshape(h, k, w + _PADDING, 3)[:, :, :w] = cell.transpose(1, 0, 2, 3)
        top += height
    return canvas


def _overlay_pixels(row: GalleryRow, scale: int) -> np.ndarray:
    """``[k, scale·H, scale·W, 3]`` uint8: the row's enlarged overlays (:func:`unit_overlay`)."""
    x = to_unit_range(row.images.detach().cpu()).permute(0, 2, 3, 1)
    masks = row.masks.cpu()
    # Kept or dimmed, in 8 bits, at the samples' size: per pixel, so enlarging afterwards gives
    # the enlarged overlay's own pixels; the outline is then drawn 1 pixel thin at full size.
    kept, dimmed = to_pixels(x), to_pixels(x * OUTSIDE_BRIGHTNESS)
    pixels = torch.where(masks.unsqueeze(-1), kept, dimmed).numpy()
    region = masks.numpy()
    if scale > 1:  # numpy's repeat copies bytes several times faster than torch's
        pixels = np.repeat(np.repeat(pixels, scale, axis=1), scale, axis=2)
        region = np.repeat(np.repeat(region, scale, axis=1), scale, axis=2)
    return _paint_outline(pixels, region, _CONTOUR_PIXEL, _OUTLINE_PIXEL)
