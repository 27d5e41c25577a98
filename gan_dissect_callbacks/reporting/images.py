"""Small image helpers for TensorBoard: image grids, enlarging small samples, legible labels.

TensorBoard's image card shows an image scaled to the card's width (about
:data:`DISPLAY_WIDTH` pixels) unless "show actual size" is ticked, so text drawn into an image
shrinks with the image's width. :func:`label_cap_height` states the rule that keeps it legible:
capital letters at least :data:`MIN_LABEL_PX` pixels tall at that display width.

Example:
    >>> import torch
    >>> grid = image_grid(torch.zeros(5, 3, 4, 4), nrow=3, padding=1)
    >>> tuple(grid.shape)
    (3, 11, 16)
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "DISPLAY_WIDTH",
    "MIN_LABEL_PX",
    "enlarge",
    "image_grid",
    "label_cap_height",
    "label_font",
    "line_metrics",
    "text_band",
    "text_width",
    "to_unit_range",
]

#: The width (pixels) at which TensorBoard's image card shows an image: the Images dashboard's
#: card in a 1400-px-wide window, measured (the Time series card is about as wide, 340 px).
DISPLAY_WIDTH = 350
#: The least height (pixels) of a capital letter of a label, as the dashboard shows it.
MIN_LABEL_PX = 10


def label_cap_height(image_width: int) -> int:
    """The cap height (pixels) of labels in an image ``image_width`` pixels wide.

    ``max(MIN_LABEL_PX, ceil(MIN_LABEL_PX · image_width / DISPLAY_WIDTH))``: an image wider than
    the card is shown shrunk by ``DISPLAY_WIDTH / image_width``, and its labels with it.

    Example:
        >>> label_cap_height(300), label_cap_height(786)
        (10, 23)
    """
    return max(MIN_LABEL_PX, math.ceil(MIN_LABEL_PX * image_width / DISPLAY_WIDTH))


@lru_cache(maxsize=32)
def label_font(cap_height: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The smallest size of Pillow's built-in scalable font whose "H" is ``cap_height`` px tall.

    Example:
        >>> font = label_font(12)
        >>> top, bottom = font.getbbox("H")[1::2]
        >>> bottom - top >= 12
        True
    """
    for size in range(cap_height, 4 * cap_height + 8):
        font = ImageFont.load_default(size=size)
        _, top, _, bottom = font.getbbox("H")
        if bottom - top >= cap_height:
            return font
    return ImageFont.load_default(size=4 * cap_height + 8)


def line_metrics(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> tuple[int, int]:
    """The top and bottom of a line of ``font`` (ascenders to descenders), in pixels."""
    _, top, _, bottom = font.getbbox("ÅAg|")
    return math.floor(top), math.ceil(bottom)


def text_width(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    """Width of ``text`` in ``font``, in pixels."""
    return math.ceil(font.getbbox(text)[2]) if text else 0


def text_band(
    text: str,
    width: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    *,
    padding: int = 2,
) -> Tensor:
    """``[3, h, width]``: black ``text`` on white, ``padding`` pixels from the left and around.

    ``h`` is the font's line height plus ``2 · padding``, the same for every text.

    Example:
        >>> band = text_band("HI", 40, label_font(10))
        >>> band.shape[0], band.shape[2], bool(band.min() < 0.5)
        (3, 40, True)
    """
    top, bottom = line_metrics(font)
    height = bottom - top + 2 * padding
    band = Image.new("RGB", (max(1, width), height), "white")
    ImageDraw.Draw(band).text((padding, padding - top), text, fill="black", font=font)
    pixels = torch.from_numpy(np.array(band, dtype=np.uint8))  # [H, W, 3]
    return pixels.permute(2, 0, 1).float() / 255


def to_unit_range(images: Tensor) -> Tensor:
    """Map images from ``[-1, 1]`` to ``[0, 1]`` (clamped), the range TensorBoard expects."""
    return ((images.detach().float() + 1) / 2).clamp(0, 1)


def image_grid(
    images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0, *, signed: bool = True
) -> Tensor:
    """Tile images ``[N, C, H, W]`` into one ``[C, H', W']`` image, ``nrow`` images per row.

    Args:
        images: the images; in ``[-1, 1]`` when ``signed`` (converted to ``[0, 1]``), else
            already in ``[0, 1]``.
        nrow: images per row.
        padding: pixels between images and around the grid.
        pad_value: value of the padding, in ``[0, 1]``.
        signed: whether ``images`` are in ``[-1, 1]``.

    Raises:
        ValueError: if ``images`` is not 4-D with at least one image.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"Expected `images` of shape [N, C, H, W] with N ≥ 1, but got {tuple(images.shape)}."
        )
    if nrow < 1:
        raise ValueError(f"Expected argument `nrow` to be ≥ 1, but got {nrow}.")
    x = to_unit_range(images) if signed else images.detach().float().clamp(0, 1)
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = torch.full(
        (c, rows * (h + padding) + padding, cols * (w + padding) + padding),
        pad_value,
        dtype=x.dtype,
        device=x.device,
    )
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid.cpu()


def enlarge(images: Tensor, min_side: int = 64) -> Tensor:
    """Upscale ``images [N, C, H, W]`` by an integer factor (nearest) to a side ≥ ``min_side``.

    Small GAN samples are unreadable at native size in TensorBoard's dashboard.

    Example:
        >>> tuple(enlarge(torch.zeros(2, 3, 16, 16)).shape)
        (2, 3, 64, 64)
    """
    import torch.nn.functional as F

    scale = max(1, math.ceil(min_side / min(images.shape[-2:])))
    if scale == 1:
        return images
    return F.interpolate(images, scale_factor=float(scale), mode="nearest")
