"""Bilinear upsampling of unit activations to the segmentation resolution.

Dissection compares each unit's activation map ``r_u`` (``h×w``) with concept masks (``H×W``),
so ``r_u`` is first resampled to ``H×W``. We use bilinear interpolation on pixel *centres*,
i.e. ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``:

- output pixel ``i`` samples the input at ``(i + 0.5)·h/H - 0.5``;
- positions outside the input's first/last pixel centre are clamped to it, so border pixels
  *replicate the edge* value; nothing fades towards zero.

How this differs from the original code:

- the 2019 GAN Dissection code sampled at ``i·h/H`` (a half-pixel shift: the map sits up
  and left of the image by half a featuremap pixel, ~4 image pixels at 8×8 → 64×64);
- the 2020 "dissect" code matches ``align_corners=False`` inside the image but pads the
  featuremap with zeros, so values fade towards 0 in a border band (4 px at 8×8 → 64×64)
  and border pixels rarely pass a high threshold.

Replicating the edge keeps a unit that fires at the image border from being penalised for
where it fires. Downsampling (``h > H``) uses the same formula without antialiasing.

Speed and reproducibility: the work runs in ``channels_last`` memory format (for
``[64, 512, 8, 8] → 64×64`` on a 2-core CPU: ~2–3 s in NCHW, ~0.13 s in channels_last), and
units are processed in aligned blocks of :data:`UNIT_BLOCK` so that every value is
bit-for-bit the same however many samples are upsampled together and whichever block a
caller asks for (PyTorch's kernel may round a channel differently depending on how many
channels share a call). Streaming counts rely on that to equal an in-memory reference exactly.

Example:
    >>> import torch
    >>> upsample_activations(torch.tensor([[[[0.0, 4.0]]]]), (1, 4))
    tensor([[[[0., 1., 3., 4.]]]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dissect_callbacks.arguments import check_size

__all__ = [
    "UNIT_BLOCK",
    "interpolation_weights",
    "upsample_activations",
    "upsample_at",
    "upsample_unit_block",
]

#: Units are upsampled in aligned blocks of this many channels (see the module docstring).
UNIT_BLOCK = 32

# Values per chunk of `upsample_at`'s temporaries.
_CHUNK_VALUES = 2**20


def _check_activations(activations: Tensor) -> None:
    if not isinstance(activations, Tensor):
        raise TypeError(
            f"Expected argument `activations` to be a tensor, but got {type(activations).__name__}."
        )
    if activations.ndim != 4:
        raise ValueError(
            f"Expected argument `activations` of shape [B, U, h, w], "
            f"but got {list(activations.shape)}."
        )
    if not activations.is_floating_point():
        raise TypeError(
            f"Expected argument `activations` to be a float tensor, but got {activations.dtype}."
        )


def interpolation_weights(
    size_in: int, size_out: int, dtype: torch.dtype = torch.float32, device: Any = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and weights of bilinear interpolation on pixel centres along one axis.

    Output index ``i`` samples the input at ``s = max((i + 0.5)·size_in/size_out - 0.5, 0)``,
    between ``first = min(floor(s), size_in - 1)`` and ``second = first + 1`` with weights
    ``1 - (s - first)`` and ``s - first``. Before the first input centre ``s`` is 0, and past
    the last one ``second`` is ``first``: the weights are 1 and 0 there, so the edges are
    replicated exactly.

    Returns:
        ``(first, second, weight_first, weight_second)``, each ``[size_out]``: int64 indices and
        weights of ``dtype`` (computed in float64, then rounded).

    Example:
        >>> first, second, w_first, w_second = interpolation_weights(2, 4)
        >>> first.tolist(), second.tolist(), w_first.tolist(), w_second.tolist()
        ([0, 0, 0, 1], [1, 1, 1, 1], [1.0, 0.75, 0.25, 1.0], [0.0, 0.25, 0.75, 0.0])
    """
    position = (torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5
    position = position.clamp(min=0)
    first = position.floor().long().clamp(max=size_in - 1)
    second = (first + 1).clamp(max=size_in - 1)
    weight = torch.where(second > first, position - first, torch.zeros_like(position))
    return (
        first.to(device),
        second.to(device),
        (1 - weight).to(device=device, dtype=dtype),
        weight.to(device=device, dtype=dtype),
    )


def upsample_unit_block(activations: Tensor, size: Sequence[int], block: int) -> Tensor:
    """Upsample units ``[block·UNIT_BLOCK, (block+1)·UNIT_BLOCK)`` of ``activations``.

    Returns exactly the corresponding slice of :func:`upsample_activations`, without computing
    the other units.

    Args:
        activations: ``[B, U, h, w]`` float tensor.
        size: the output size ``(H, W)``.
        block: index of the unit block, ``0 <= block < ceil(U / UNIT_BLOCK)``.

    Returns:
        ``[B, min(UNIT_BLOCK, U - block·UNIT_BLOCK), H, W]`` in ``channels_last`` format.
    """
    _check_activations(activations)
    height, width = check_size(size, "size")
    num_blocks = -(-activations.shape[1] // UNIT_BLOCK)
    if not (isinstance(block, int) and 0 <= block < num_blocks):
        raise ValueError(
            f"Expected argument `block` to be an int in [0, {num_blocks}), but got {block!r}."
        )
    part = activations[:, block * UNIT_BLOCK : (block + 1) * UNIT_BLOCK]
    part = part.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def upsample_activations(activations: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling on pixel centres with edge replication (``align_corners=False``).

    Args:
        activations: ``[B, U, h, w]`` float tensor of unit activations.
        size: the output size ``(H, W)``, usually the segmentation resolution.

    Returns:
        ``[B, U, H, W]`` tensor of the same dtype in ``channels_last`` memory format.

    Raises:
        TypeError: if ``activations`` is not a float tensor.
        ValueError: if ``activations`` is not 4-D or ``size`` is not two positive ints.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        >>> upsample_activations(x, (4, 4))[0, 0]
        tensor([[1.0000, 1.2500, 1.7500, 2.0000],
                [1.5000, 1.7500, 2.2500, 2.5000],
                [2.5000, 2.7500, 3.2500, 3.5000],
                [3.0000, 3.2500, 3.7500, 4.0000]])
    """
    _check_activations(activations)
    height, width = check_size(size, "size")
    batch, units = activations.shape[:2]
    out = torch.empty(
        (batch, units, height, width),
        dtype=activations.dtype,
        device=activations.device,
        memory_format=torch.channels_last,
    )
    for block in range(-(-units // UNIT_BLOCK)):
        start = block * UNIT_BLOCK
        out[:, start : start + UNIT_BLOCK] = upsample_unit_block(
            activations, (height, width), block
        )
    return out


def upsample_at(activations: Tensor, size: Sequence[int], pixels: Tensor) -> Tensor:
    """The bilinear interpolation of :func:`upsample_activations` at some pixels only.

    For a few pixels of a large batch (the level calibration's sample) this costs a fraction of
    upsampling everything. Each value is ``w0'·(w0·a00 + w1·a01) + w1'·(w0·a10 + w1·a11)``
    with the weights of :func:`interpolation_weights`, rounded to the input's dtype at each step;
    ``F.interpolate`` adds the same terms in another order, so a value may differ from
    :func:`upsample_activations`'s in its last bit. Pixels are read in chunks of ~2^20 values:
    besides the output, memory holds one copy of ``activations`` and a chunk's temporaries.

    Args:
        activations: ``[B, U, h, w]`` float tensor.
        size: the output size ``(H, W)``.
        pixels: int64 flat indices ``b·H·W + y·W + x`` of the wanted pixels.

    Returns:
        ``[U, len(pixels)]`` tensor of the dtype of ``activations``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        >>> upsample_at(x, (4, 4), torch.tensor([0, 5, 15]))
        tensor([[1.0000, 1.7500, 4.0000]])
    """
    _check_activations(activations)
    height, width = check_size(size, "size")
    h, w = activations.shape[2:]
    dtype, device = activations.dtype, activations.device
    y0, y1, wy0, wy1 = interpolation_weights(h, height, dtype, device)
    x0, x1, wx0, wx1 = interpolation_weights(w, width, dtype, device)
    pixels = pixels.to(activations.device)
    sample, rest = pixels // (height * width), pixels % (height * width)
    y, x = rest // width, rest % width
    # Corners by flat index along one contiguous axis: several times faster than indexing the
    # [U, B, h, w] view with three index tensors.
    units = activations.shape[1]
    flat = activations.transpose(0, 1).reshape(units, -1)  # [U, B·h·w]
    first = sample * (h * w)
    top, bottom, w_top, w_bottom = first + y0[y] * w, first + y1[y] * w, wy0[y], wy1[y]
    left, right, w_left, w_right = x0[x], x1[x], wx0[x], wx1[x]

    def row(at: Tensor, part: slice) -> Tensor:
        return (
            flat.index_select(1, at + left[part]) * w_left[part]
            + flat.index_select(1, at + right[part]) * w_right[part]
        )

    out = torch.empty((units, pixels.numel()), dtype=dtype, device=device)
    step = max(1, _CHUNK_VALUES // max(1, units))  # bounded temporaries
    for start in range(0, pixels.numel(), step):
        part = slice(start, start + step)
        upper = row(top[part], part) * w_top[part]
        torch.add(upper, row(bottom[part], part) * w_bottom[part], out=out[:, part])
    return out
