"""Small image helpers for TensorBoard: image grids without torchvision, enlarging small samples.

Example:
    >>> import torch
    >>> grid = image_grid(torch.zeros(5, 3, 4, 4), nrow=3, padding=1)
    >>> tuple(grid.shape)
    (3, 11, 16)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["enlarge", "image_grid", "to_unit_range"]


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
    import math

    import torch.nn.functional as F

    scale = max(1, math.ceil(min_side / min(images.shape[-2:])))
    if scale == 1:
        return images
    return F.interpolate(images, scale_factor=float(scale), mode="nearest")
