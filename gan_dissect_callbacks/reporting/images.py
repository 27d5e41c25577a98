"""Small image helpers for TensorBoard: image grids, enlarging small samples, legible labels.

TensorBoard's image card shows an image scaled to the card's width (about
:data:`DISPLAY_WIDTH` pixels) unless "show actual size" is ticked, so text drawn into an image
shrinks with the image's width. :func:`label_cap_height` states the rule that keeps it legible:
capital letters at least :data:`MIN_LABEL_PX` pixels tall at that display width.

Images reach TensorBoard as PNG files of 8-bit pixels. :func:`to_pixels` is the conversion
TensorBoard's ``add_image`` applies to a float image (×255, clipped, truncated), and
:func:`png_bytes` encodes such pixels itself, with a light zlib level and no row filters: the
file decodes to the very same pixels, written in a fifth of the time Pillow's default takes.

Example:
    >>> import torch
    >>> grid = image_grid(torch.zeros(5, 3, 4, 4), nrow=3, padding=1)
    >>> tuple(grid.shape)
    (3, 11, 16)
"""

from __future__ import annotations

import contextlib
import math
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "DISPLAY_WIDTH",
    "MIN_LABEL_PX",
    "ImageLog",
    "enlarge",
    "from_pixels",
    "image_grid",
    "image_pixels",
    "label_cap_height",
    "label_font",
    "line_metrics",
    "png_bytes",
    "sized_font",
    "text_band",
    "text_band_pixels",
    "text_width",
    "to_pixels",
    "to_unit_range",
]

#: The width (pixels) at which TensorBoard's image card shows an image: the Images dashboard's
#: card in a 1400-px-wide window, measured (the Time series card is about as wide, 340 px).
DISPLAY_WIDTH = 350
#: The least height (pixels) of a capital letter of a label, as the dashboard shows it.
MIN_LABEL_PX = 10
#: zlib level of :func:`png_bytes`. Level 3 without row filters gives files a little smaller
#: than Pillow's default (level 6 with adaptive filters) on galleries, charts and tables, in a
#: fifth of the time: enlarged samples repeat whole rows, which zlib finds without filters.
PNG_COMPRESSION_LEVEL = 3


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


@lru_cache(maxsize=32)
def sized_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The charts' font at ``size`` pixels, made once: DejaVu Sans, which matplotlib ships.

    The charts keep the look of matplotlib's, and their legends need Greek (α), which
    Pillow's built-in font lacks; labels on images (:func:`label_font`) keep the built-in
    font, sized by its cap height. Pillow's font stands in if matplotlib's copy cannot be read.

    Example:
        >>> sized_font(11) is sized_font(11), text_width("α", sized_font(11)) > 0
        (True, True)
    """
    try:
        return ImageFont.truetype(_dejavu_sans(), size)
    except (OSError, ImportError):  # no such file, or a Pillow built without FreeType
        return ImageFont.load_default(size=size)


def _dejavu_sans() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


def line_metrics(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> tuple[int, int]:
    """The top and bottom of a line of ``font`` (ascenders to descenders), in pixels."""
    _, top, _, bottom = font.getbbox("ÅAg|")
    return math.floor(top), math.ceil(bottom)


def text_width(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    """Width of ``text`` in ``font``, in pixels."""
    return math.ceil(font.getbbox(text)[2]) if text else 0


def text_band_pixels(
    text: str,
    width: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    *,
    padding: int = 2,
) -> np.ndarray:
    """``[h, width, 3]`` uint8: black ``text`` on white, ``padding`` px from the left and around.

    ``h`` is the font's line height plus ``2 · padding``, the same for every text.

    Example:
        >>> band = text_band_pixels("HI", 40, label_font(10))
        >>> band.shape[1:], band.dtype.name, int(band.min()) < 128
        ((40, 3), 'uint8', True)
    """
    top, bottom = line_metrics(font)
    height = bottom - top + 2 * padding
    band = Image.new("RGB", (max(1, width), height), "white")
    ImageDraw.Draw(band).text((padding, padding - top), text, fill="black", font=font)
    return np.asarray(band, dtype=np.uint8)


def text_band(
    text: str,
    width: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    *,
    padding: int = 2,
) -> Tensor:
    """:func:`text_band_pixels` as a ``[3, h, width]`` float image in ``[0, 1]``.

    Example:
        >>> band = text_band("HI", 40, label_font(10))
        >>> band.shape[0], band.shape[2], bool(band.min() < 0.5)
        (3, 40, True)
    """
    return from_pixels(text_band_pixels(text, width, font, padding=padding))


def to_pixels(image: Tensor) -> Tensor:
    """The 8-bit pixels TensorBoard stores of a float image in ``[0, 1]``: ×255, clipped, cut.

    ``SummaryWriter.add_image`` converts a float image so; a float image made of 8-bit
    pixels (``k / 255``) gets exactly those pixels back.

    Example:
        >>> to_pixels(torch.tensor([0.0, 0.5, 1.0, 2.0, 7 / 255])).tolist()
        [0, 127, 255, 255, 7]
    """
    return (image.detach().float() * 255).clamp(0, 255).to(torch.uint8)


def image_pixels(image: Tensor) -> np.ndarray:
    """A ``[3, H, W]`` float image in ``[0, 1]`` as the ``[H, W, 3]`` uint8 pixels TensorBoard
    stores of it (:func:`to_pixels`), contiguous, for :class:`ImageLog`.

    Example:
        >>> image_pixels(torch.tensor([[[0.0]], [[0.5]], [[1.0]]])).tolist()
        [[[0, 127, 255]]]
    """
    return np.ascontiguousarray(to_pixels(image).permute(1, 2, 0).numpy())


def from_pixels(pixels: np.ndarray | Tensor) -> Tensor:
    """``[H, W, 3]`` uint8 pixels as a ``[3, H, W]`` float image in ``[0, 1]`` (``k / 255``)."""
    if isinstance(pixels, np.ndarray):
        # torch wants arrays it could write to; a read-only one (a cached chart) is copied.
        pixels = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())
    return pixels.permute(2, 0, 1).float() / 255


def _rgb_pixels(array: np.ndarray) -> bool:
    """Whether ``array`` is ``[H, W, 3]`` uint8 with ``H, W ≥ 1``: what a PNG here holds."""
    return array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3 and array.size > 0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(pixels: np.ndarray | Tensor, level: int = PNG_COMPRESSION_LEVEL) -> bytes:
    """Encode ``[H, W, 3]`` uint8 RGB pixels as a PNG file (8 bits per channel, no interlace).

    Every row is stored unfiltered and the whole image deflated at zlib ``level``
    (:data:`PNG_COMPRESSION_LEVEL`); PNG is lossless, so any decoder gives ``pixels`` back.

    Raises:
        ValueError: if ``pixels`` is not a ``[H, W, 3]`` uint8 array with ``H, W ≥ 1``.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        >>> decoded = np.asarray(Image.open(io.BytesIO(png_bytes(pixels))))
        >>> bool((decoded == pixels).all())
        True
    """
    array = pixels.numpy() if isinstance(pixels, Tensor) else np.asarray(pixels)
    if not _rgb_pixels(array):
        raise ValueError(
            "Expected argument `pixels` to be a [H, W, 3] uint8 array, but got "
            f"{array.dtype} of shape {list(array.shape)}."
        )
    height, width, _ = array.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # a 0 byte per row: no filter
    rows[:, 1:] = array.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.data, level)),
            _png_chunk(b"IEND", b""),
        )
    )


class ImageLog:
    """The images of one logging call, written as ``add_image`` would write them.

    A ``SummaryWriter`` would encode each PNG with Pillow's slow default; here the same pixels
    are encoded by :func:`png_bytes` on a second thread (zlib releases the GIL, so it runs
    beside the drawing of the next image) and go to the event file as the image summaries
    ``add_image`` writes, at :meth:`close` (the end of a ``with`` block). Any other writer gets
    ``add_image`` with the float image, at once.

    Args:
        writer: a ``SummaryWriter``, or anything with ``add_image(tag, image, global_step)``.

    Example:
        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> writer = SummaryWriter(tempfile.mkdtemp())
        >>> with ImageLog(writer) as log:
        ...     log.add("views/red", np.full((4, 6, 3), [255, 0, 0], dtype=np.uint8), step=3)
        >>> writer.close()
    """

    def __init__(self, writer: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = writer
        # A subclass with its own add_image gets it called, as it expects.
        own = (
            isinstance(writer, SummaryWriter) and type(writer).add_image is SummaryWriter.add_image
        )
        self._encoder = ThreadPoolExecutor(1) if own else None
        self._pending: list[tuple[str, tuple[int, ...], int, Future[bytes]]] = []

    def add(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """Log ``[H, W, 3]`` uint8 ``pixels`` (not changed afterwards) as image ``tag``.

        Raises:
            ValueError: if ``pixels`` is not a ``[H, W, 3]`` uint8 array (here, not when the
                images are written).
        """
        if not (isinstance(pixels, np.ndarray) and _rgb_pixels(pixels)):
            shape = list(getattr(pixels, "shape", [])) or type(pixels).__name__
            raise ValueError(
                f"Expected image {tag!r} as [H, W, 3] uint8 RGB pixels, but got "
                f"{getattr(pixels, 'dtype', type(pixels).__name__)} of shape {shape}."
            )
        if self._encoder is None:
            self._writer.add_image(tag, from_pixels(pixels), global_step=step)
            return
        self._pending.append((tag, pixels.shape, step, self._encoder.submit(png_bytes, pixels)))

    def __enter__(self) -> ImageLog:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # The block failed: its error is the one to see, not a later one of the encoding.
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Write the encoded images, in the order they came; an encoding error is raised here."""
        if self._encoder is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        try:
            for tag, (height, width, channels), step, png in self._pending:
                image = Summary.Image(
                    height=height,
                    width=width,
                    colorspace=channels,
                    encoded_image_string=png.result(),
                )
                summary = Summary(value=[Summary.Value(tag=tag, image=image)])
                self._writer._get_file_writer().add_summary(summary, step)
        finally:
            self._pending = []
            self._encoder.shutdown(cancel_futures=True)


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
