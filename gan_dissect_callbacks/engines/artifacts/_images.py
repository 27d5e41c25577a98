"""The image checks shared by artifact scoring and verification (the SWD's input contract)."""

from __future__ import annotations

from torch import Tensor

from gan_dissect_callbacks.functional.swd_sets import MIN_RESOLUTION
from gan_dissect_callbacks.segmenters.base import check_images

__all__ = ["check_generated", "check_real_images"]


def check_real_images(images: object) -> Tensor:
    """``images`` if it is a float tensor ``[N, 3, S, S]`` in ``[-1, 1]``, ``S`` a power of two."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        got = f"a {images.dtype} tensor" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(
            f"Expected argument `real_images` to be a float tensor [N, 3, S, S], but got {got}."
        )
    shape = list(images.shape)
    side = shape[-1] if images.ndim == 4 else 0
    if (
        images.ndim != 4
        or shape[0] == 0
        or shape[1] != 3
        or shape[2] != side
        or side < MIN_RESOLUTION
        or side & (side - 1)
    ):
        raise ValueError(
            "Expected argument `real_images` to have shape [N, 3, S, S] with N >= 1 and S a power"
            f" of two >= {MIN_RESOLUTION}, but got {shape}."
        )
    check_images(images)
    return images


def check_generated(images: object, real: Tensor) -> Tensor:
    """Generated ``images`` if they are valid images with the ``[C, H, W]`` of ``real``."""
    check_images(images)  # type: ignore[arg-type]
    assert isinstance(images, Tensor)
    if images.shape[1:] != real.shape[1:]:
        raise ValueError(
            "Expected generated images to have the [C, H, W] of `real_images`"
            f" {list(real.shape[1:])}, but got {list(images.shape[1:])}."
        )
    return images
