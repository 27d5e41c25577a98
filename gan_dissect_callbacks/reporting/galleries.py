"""The paper's unit gallery: top-activating samples with the unit's region highlighted.

- :func:`unit_overlay`: everything outside the thresholded region darkened (×0.5) and a thin
  yellow contour around it, itself ringed in black so that it shows on light concepts too;
- :func:`unit_gallery`: one titled row per unit (a :class:`GalleryRow`), ready for
  ``SummaryWriter.add_image``; samples enlarged to at least :data:`MIN_TILE_SIDE` pixels and
  titles sized by :func:`~gan_dissect_callbacks.reporting.images.label_cap_height`, so they
  stay legible when TensorBoard shrinks the image to its card.

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

import torch
from torch import Tensor

from gan_dissect_callbacks.reporting.images import (
    image_grid,
    label_cap_height,
    label_font,
    text_band,
    text_width,
    to_unit_range,
)

__all__ = ["GalleryRow", "unit_gallery", "unit_overlay"]

#: How much the pixels outside a unit's region are dimmed (the paper's galleries: ×0.5).
OUTSIDE_BRIGHTNESS = 0.5
#: Colour of the region's contour, RGB in ``[0, 1]``.
CONTOUR_COLOUR = (1.0, 1.0, 0.0)
#: Colour of the ring just outside the contour: the yellow line vanishes on yellow and white
#: concepts (sun, cloud), a black one on dark ones; side by side one of the two always shows.
OUTLINE_COLOUR = (0.0, 0.0, 0.0)
#: Gallery samples smaller than this (pixels) are enlarged by an integer factor (nearest).
MIN_TILE_SIDE = 96

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


def _outer_ring(masks: Tensor) -> Tensor:
    """Pixels outside the region with at least one 4-neighbour inside it."""
    grown = masks.clone()
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
    x = to_unit_range(images)
    masks = masks.to(x.device)
    dimmed = torch.where(masks.unsqueeze(1), x, x * OUTSIDE_BRIGHTNESS)
    colour = torch.tensor(CONTOUR_COLOUR, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    dark = torch.tensor(OUTLINE_COLOUR, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    outlined = torch.where(_outer_ring(masks).unsqueeze(1), dark, dimmed)
    return torch.where(_region_contour(masks).unsqueeze(1), colour, outlined)


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


def _pad_right(image: Tensor, width: int) -> Tensor:
    if image.shape[-1] == width:
        return image
    pad = torch.full((3, image.shape[1], width - image.shape[2]), _BACKGROUND)
    return torch.cat([image, pad], dim=2)


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
        return text_band(text, text_width(text, font) + 2 * _PADDING, font, padding=_PADDING)

    if scale is None:
        smallest = min(min(row.images.shape[-2:]) for row in rows)
        scale = max(1, math.ceil(MIN_TILE_SIDE / max(1, smallest)))
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
    width = max(grid.shape[2] for grid in grids)
    font = label_font(label_cap_height(width))
    # A title wider than the images widens the image; its letters then keep their share of it.
    width = max(width, max(text_width(row.title, font) for row in rows) + 2 * _PADDING)
    blocks = []
    for row, grid in zip(rows, grids, strict=True):
        blocks.append(text_band(row.title, width, font, padding=_PADDING))
        blocks.append(_pad_right(grid, width))
    return torch.cat(blocks, dim=1)
