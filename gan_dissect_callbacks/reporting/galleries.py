"""The paper's unit gallery: top-activating samples with the unit's region highlighted.

- :func:`unit_overlay`: everything outside the thresholded region darkened (×0.5) and a thin
  yellow contour around it;
- :func:`unit_gallery`: one titled row per unit (a :class:`GalleryRow`), ready for
  ``SummaryWriter.add_image``.

Pure rendering: tensors in, an image tensor in ``[0, 1]`` out; nothing here writes to a logger.

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

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from gan_dissect_callbacks.reporting.images import image_grid, to_unit_range

__all__ = ["GalleryRow", "unit_gallery", "unit_overlay"]

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
