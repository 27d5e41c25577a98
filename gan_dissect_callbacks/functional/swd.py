"""Sliced Wasserstein distance (SWD) between two sets of images, as in Progressive GAN.

The metric of Karras et al. (2018) compares the *local* image statistics of real and generated
images at several scales, without any pretrained network:

1. Each image is decomposed into a Laplacian pyramid (5-tap binomial blur, factor-2 steps) down to
   ``min_resolution`` pixels: at 32×32 the levels are 32 and 16, at 64×64 they are 64, 32 and 16.
   Every level but the coarsest holds band-pass detail; the coarsest holds the blurred image.
2. From every level of every image ``num_descriptors_per_image`` random square neighbourhoods of
   ``patch_size`` pixels are cut out: descriptors of ``C·7·7`` values.
3. Each set of descriptors (real or fake, one level) is normalised per colour channel by the mean
   and standard deviation of that set.
4. The sliced Wasserstein distance between the two sets is the mean, over ``num_projections``
   random unit directions, of the exact 1-D Wasserstein-1 distance between the projected sets.

Results are reported ×10³ per level and as the average over levels.

All randomness comes from an explicit :class:`torch.Generator`; with ``generator=None`` a fresh
generator seeded with 0 is used, so the global random state is never touched.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> real = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    >>> fake = (real + 0.5 * torch.rand(4, 3, 32, 32, generator=g)).clamp(-1, 1)
    >>> result = swd(real, fake, generator=torch.Generator().manual_seed(0))
    >>> sorted(result.per_level)
    [16, 32]
    >>> {name: round(value.item(), 1) for name, value in result.as_dict().items()}
    {'swd_32': 35.9, 'swd_16': 51.0, 'swd_avg': 43.4}
    >>> swd(real, real).average.item()  # real and fake share the random neighbourhoods
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.functional.sorting import sort_rows

__all__ = [
    "SlicedWassersteinResult",
    "descriptor_corners",
    "laplacian_pyramid",
    "normalize_descriptors",
    "patches_at",
    "random_directions",
    "real_projections",
    "sample_descriptors",
    "sliced_wasserstein",
    "sliced_wasserstein_sorted",
    "sorted_projections",
    "swd",
    "swd_from_descriptors",
]

#: Directions are projected this many at a time (the paper's "4 × 128"), which bounds the memory of
#: one step to ``(N + M) × 128`` values whatever ``num_projections`` is.
_PROJECTIONS_PER_CHUNK = 128

_BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)

#: Longest run of gaps summed in float32 before the runs are summed in float64.
_FLOAT32_RUN = 64


@dataclass(frozen=True)
class SlicedWassersteinResult:
    """SWD ×10³ per pyramid level and averaged over levels.

    Attributes:
        per_level: resolution of the level (e.g. ``32``) → scalar SWD ×10³, finest level first.
        average: mean of ``per_level`` values (scalar tensor).
    """

    per_level: dict[int, Tensor]
    average: Tensor

    def as_dict(self, prefix: str = "swd") -> dict[str, Tensor]:
        """Flat ``{"swd_32": ..., "swd_16": ..., "swd_avg": ...}``, ready for ``log_dict``."""
        out = {f"{prefix}_{resolution}": value for resolution, value in self.per_level.items()}
        out[f"{prefix}_avg"] = self.average
        return out


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return torch.Generator().manual_seed(0) if generator is None else generator


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_images(images: object, name: str, min_resolution: int) -> Tensor:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        what = f"a {images.dtype} tensor" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"Expected argument `{name}` to be a float tensor, but got {what}.")
    shape = tuple(images.shape)
    if (
        images.ndim != 4
        or shape[0] == 0
        or shape[2] != shape[3]
        or not _is_power_of_two(shape[2])
        or shape[2] < min_resolution
    ):
        raise ValueError(
            f"Expected argument `{name}` to have shape [B, C, H, W] with B >= 1 and H == W a"
            f" power of two >= {min_resolution}, but got {list(shape)}."
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"Expected argument `{name}` to hold only finite values, but got NaN/Inf.")
    return images


def _binomial_blur(images: Tensor, gain: float, stride: int = 1) -> Tensor:
    """5×5 binomial blur (separable ``[1, 4, 6, 4, 1] / 16`` times ``gain`` per pass).

    Borders are mirrored without repeating the edge pixel. With ``stride=2`` only every second
    output pixel (rows and columns 0, 2, 4, ...) is computed.
    """
    channels = images.shape[1]
    taps = torch.tensor(_BINOMIAL_5, dtype=images.dtype, device=images.device) * (gain / 16.0)
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    row_kernel = taps.view(1, 1, 1, 5).expand(channels, 1, 1, 5)
    col_kernel = taps.view(1, 1, 5, 1).expand(channels, 1, 5, 1)
    rows = F.conv2d(padded, row_kernel, stride=(1, stride), groups=channels)
    return F.conv2d(rows, col_kernel, stride=(stride, 1), groups=channels)


def _pyr_down(images: Tensor) -> Tensor:
    return _binomial_blur(images, gain=1.0, stride=2)


def _pyr_up(images: Tensor) -> Tensor:
    b, c, h, w = images.shape
    spread = images.new_zeros(b, c, 2 * h, 2 * w)
    spread[..., ::2, ::2] = images
    # Only a quarter of the pixels carry values, so each 1-D pass needs gain 2 to keep brightness.
    return _binomial_blur(spread, gain=2.0)


def laplacian_pyramid(images: Tensor, min_resolution: int = 16) -> list[Tensor]:
    """Laplacian pyramid of a batch of square images, finest level first.

    Level ``k`` is ``G_k − up(G_{k+1})`` where ``G_0`` is the image, ``G_{k+1} = down(G_k)``
    (binomial blur, keep every second pixel) and ``up`` inserts zeros and blurs with total gain 4
    (2 per pass) so that brightness is kept. Borders are mirrored without repeating the edge
    pixel, so ``down`` and ``up`` agree with OpenCV's ``pyrDown``/``pyrUp`` (default border) to
    float rounding. The last level is the coarsest Gaussian level itself, so the pyramid sums back
    to the image (up to rounding) when collapsed.

    Args:
        images: ``[B, C, H, W]`` float tensor, ``H == W`` a power of two ``>= min_resolution``.
        min_resolution: side length of the coarsest level, a power of two ``>= 2``.

    Returns:
        ``log2(H / min_resolution) + 1`` tensors of shapes ``[B, C, H, W]``, ``[B, C, H/2, W/2]``,
        and so on.

    Example:
        >>> x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> [level.shape[-1] for level in laplacian_pyramid(x)]
        [64, 32, 16]
        >>> [level.shape[-1] for level in laplacian_pyramid(x, min_resolution=32)]
        [64, 32]
    """
    if (
        isinstance(min_resolution, bool)
        or not isinstance(min_resolution, int)
        or not _is_power_of_two(min_resolution)
        or min_resolution < 2
    ):
        raise ValueError(
            "Expected argument `min_resolution` to be a power of two >= 2, but got"
            f" {min_resolution!r}."
        )
    _check_images(images, "images", min_resolution)
    gaussian = [images]
    while gaussian[-1].shape[-1] > min_resolution:
        gaussian.append(_pyr_down(gaussian[-1]))
    laplacian = [fine - _pyr_up(coarse) for fine, coarse in pairwise(gaussian)]
    return [*laplacian, gaussian[-1]]


def sample_descriptors(
    level: Tensor,
    num_per_image: int = 128,
    patch_size: int = 7,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Cut ``num_per_image`` random square neighbourhoods out of every image of one pyramid level.

    Positions are drawn uniformly (with replacement) among all positions where the patch fits,
    independently per image, in one batched gather.

    Args:
        level: ``[B, C, S, S]`` float tensor (one pyramid level), ``S >= patch_size``.
        num_per_image: neighbourhoods per image.
        patch_size: side length of a neighbourhood.
        generator: source of the random positions (``None``: a fresh generator seeded with 0).

    Returns:
        ``[B · num_per_image, C, patch_size, patch_size]``; rows of image ``i`` come before those of
        image ``i + 1``.

    Example:
        >>> level = torch.arange(16.0).view(1, 1, 4, 4)
        >>> d = sample_descriptors(level, 2, 3, torch.Generator().manual_seed(0))
        >>> d.shape
        torch.Size([2, 1, 3, 3])
        >>> d[0, 0]
        tensor([[ 0.,  1.,  2.],
                [ 4.,  5.,  6.],
                [ 8.,  9., 10.]])
    """
    num_per_image = check_int(num_per_image, "num_per_image")
    patch_size = check_int(patch_size, "patch_size")
    if not isinstance(level, Tensor) or level.ndim != 4 or level.shape[-1] < patch_size:
        shape = list(level.shape) if isinstance(level, Tensor) else type(level).__name__
        raise ValueError(
            f"Expected argument `level` to have shape [B, C, S, S] with S >= patch_size ="
            f" {patch_size}, but got {shape}."
        )
    generator = _default_generator(generator)
    b, _, h, w = level.shape
    corners = descriptor_corners(b, (h, w), num_per_image, patch_size, generator)
    return patches_at(level, corners, patch_size)


def descriptor_corners(
    num_images: int,
    size: tuple[int, int],
    num_per_image: int,
    patch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """The random neighbourhoods :func:`sample_descriptors` cuts, drawn alone: ``[B, n]`` corners.

    Each is the flat index ``top · (W − p + 1) + left`` of a patch's top-left pixel, uniform over
    the positions where it fits, on the generator's device. Drawing them first lets a caller cut
    the same neighbourhoods batch by batch (:func:`patches_at` on the batch's rows).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> level = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        >>> corners = descriptor_corners(2, (8, 8), 5, 3, g)
        >>> cut = patches_at(level, corners, 3)
        >>> torch.equal(cut, sample_descriptors(level, 5, 3, torch.Generator().manual_seed(0)))
        True
    """
    h, w = size
    return torch.randint(
        0,
        (h - patch_size + 1) * (w - patch_size + 1),
        (num_images, num_per_image),
        generator=generator,
        device=generator.device,
    )


def patches_at(level: Tensor, corners: Tensor, patch_size: int) -> Tensor:
    """The ``[B · n, C, p, p]`` neighbourhoods of ``level [B, C, S, S]`` at ``corners [B, n]``
    (from :func:`descriptor_corners`); rows of image ``i`` come before those of image ``i + 1``.

    Example:
        >>> level = torch.arange(16.0).view(1, 1, 4, 4)
        >>> patches_at(level, torch.tensor([[5]]), 2)[0, 0]  # the 2×2 patch at row 1, column 2
        tensor([[ 6.,  7.],
                [10., 11.]])
    """
    b, c, h, w = level.shape
    num_per_image = corners.shape[1]
    corner = corners.to(level.device)
    top, left = corner // (w - patch_size + 1), corner % (w - patch_size + 1)
    offsets = torch.arange(patch_size, device=level.device)
    rows = (top[..., None] + offsets).unsqueeze(-1)  # [B, K, p, 1]
    cols = (left[..., None] + offsets).unsqueeze(-2)  # [B, K, 1, p]
    flat_index = (rows * w + cols).view(b, 1, -1).expand(b, c, -1)  # [B, C, K·p·p]
    patches = level.reshape(b, c, h * w).gather(2, flat_index)
    patches = patches.view(b, c, num_per_image, patch_size, patch_size).transpose(1, 2)
    return patches.reshape(b * num_per_image, c, patch_size, patch_size)


def normalize_descriptors(descriptors: Tensor) -> Tensor:
    """Normalise a set of descriptors per colour channel by the set's own mean and std.

    Mean and (population) standard deviation of channel ``c`` are taken over all descriptors and
    all pixels of the set. A channel that is constant over the set has std 0 and is only centred.

    Args:
        descriptors: ``[N, C, p, p]`` float tensor, ``N >= 1``.

    Returns:
        Tensor of the same shape whose channels have mean 0 and std 1 (or 0 when constant).

    Example:
        >>> d = torch.tensor([[[[0.0]], [[5.0]]], [[[2.0]], [[5.0]]]])  # N=2, C=2, p=1
        >>> normalize_descriptors(d).flatten().tolist()
        [-1.0, 0.0, 1.0, 0.0]
    """
    if not isinstance(descriptors, Tensor) or descriptors.ndim != 4 or descriptors.shape[0] == 0:
        shape = list(descriptors.shape) if isinstance(descriptors, Tensor) else descriptors
        raise ValueError(
            "Expected argument `descriptors` to have shape [N, C, p, p] with N >= 1, but got"
            f" {shape}."
        )
    mean = descriptors.mean(dim=(0, 2, 3), keepdim=True)
    std = descriptors.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (descriptors - mean).div_(torch.where(std > 0, std, torch.ones_like(std)))


def random_directions(
    dim: int, num_directions: int, generator: torch.Generator | None = None
) -> Tensor:
    """``num_directions`` random unit vectors in ``R^dim`` (normalised Gaussians), as columns.

    Args:
        dim: dimension of the space.
        num_directions: number of directions.
        generator: source of randomness (``None``: a fresh generator seeded with 0).

    Returns:
        ``[dim, num_directions]`` float32 tensor on the generator's device; every column has norm 1.

    Example:
        >>> d = random_directions(147, 4, torch.Generator().manual_seed(0))
        >>> d.shape, torch.allclose(d.norm(dim=0), torch.ones(4))
        (torch.Size([147, 4]), True)
    """
    dim = check_int(dim, "dim")
    num_directions = check_int(num_directions, "num_directions")
    generator = _default_generator(generator)
    directions = torch.randn(dim, num_directions, generator=generator, device=generator.device)
    return directions / directions.norm(dim=0, keepdim=True)


def _quantile_segments(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Pieces on which the quantile functions of two empirical sets (sizes n, m) are both constant.

    In units of ``1 / (n·m)`` the quantile function of the ``n``-set steps at multiples of ``m`` and
    that of the ``m``-set at multiples of ``n``; between consecutive breakpoints of the union both
    are constant. Returns, per piece, the sorted index into each set and the piece's length.
    """
    steps = torch.cat(
        [
            torch.arange(1, n + 1, device=device, dtype=torch.int64) * m,
            torch.arange(1, m + 1, device=device, dtype=torch.int64) * n,
        ]
    ).unique(sorted=True)
    lengths = torch.diff(steps, prepend=steps.new_zeros(1)).double() / (n * m)
    index_a = (steps + m - 1) // m - 1  # ceil(t / m) - 1
    index_b = (steps + n - 1) // n - 1
    return index_a, index_b, lengths


def sorted_projections(points: Tensor, directions: Tensor) -> list[Tensor]:
    """The projections of ``points [N, D]`` on ``directions [D, P]``, sorted per direction.

    Directions are taken :data:`_PROJECTIONS_PER_CHUNK` at a time; chunk ``i`` is a
    ``[directions, N]`` tensor whose rows are sorted. A set compared many times (the real images
    of a monitor) is projected and sorted once and passed to :func:`sliced_wasserstein_sorted`.

    Example:
        >>> points = torch.tensor([[2.0], [3.0], [1.0]])
        >>> sorted_projections(points, torch.tensor([[1.0, -1.0]]))
        [tensor([[ 1.,  2.,  3.],
                [-3., -2., -1.]])]
    """
    directions = directions.to(points.device, points.dtype)
    # [directions, points] layout: sorting contiguous rows is the fast path.
    return [sort_rows(chunk @ points.T) for chunk in directions.T.split(_PROJECTIONS_PER_CHUNK)]


def sliced_wasserstein_sorted(sorted_a: list[Tensor], sorted_b: list[Tensor]) -> Tensor:
    """Sliced W1 from the :func:`sorted_projections` of two sets on the same directions.

    Per direction the exact 1-D Wasserstein-1 distance of the two empirical distributions; the
    result is the mean over directions (as :func:`sliced_wasserstein`, which calls this).

    Example:
        >>> directions = torch.tensor([[1.0]])
        >>> a = sorted_projections(torch.tensor([[0.0], [1.0]]), directions)
        >>> b = sorted_projections(torch.tensor([[0.0], [1.0], [2.0], [3.0]]), directions)
        >>> sliced_wasserstein_sorted(a, b)
        tensor(1.)
    """
    n, m = sorted_a[0].shape[1], sorted_b[0].shape[1]
    total = torch.zeros((), dtype=torch.float64, device=sorted_a[0].device)
    segments = None if n == m else _quantile_segments(n, m, sorted_a[0].device)
    for proj_a, proj_b in zip(sorted_a, sorted_b, strict=True):
        total += _sorted_w1_sum(proj_a, proj_b, segments)
    num_projections = sum(chunk.shape[0] for chunk in sorted_a)
    return (total / num_projections).to(sorted_a[0].dtype)


def _sorted_w1_sum(
    proj_a: Tensor, proj_b: Tensor, segments: tuple[Tensor, Tensor, Tensor] | None
) -> Tensor:
    """Sum over rows (directions) of the exact W1 of two row-sorted chunks ``[P, N]``, ``[P, M]``.

    ``segments`` is :func:`_quantile_segments` of ``(N, M)``, or ``None`` when ``N == M``.
    """
    if segments is None:
        # Both quantile functions step at the same points: W1 is the mean gap of sorted values.
        return (proj_a - proj_b).abs().double().sum() / proj_a.shape[1]
    index_a, index_b, lengths = segments
    gaps = (proj_a[:, index_a] - proj_b[:, index_b]).abs().double()
    return (gaps * lengths).sum()


def sliced_wasserstein(
    a: Tensor,
    b: Tensor,
    num_projections: int = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced Wasserstein-1 distance between two point sets.

    Both sets are projected on ``num_projections`` random unit directions (drawn first, with
    :func:`random_directions`, from ``generator``); for every direction the exact 1-D
    Wasserstein-1 distance ``∫₀¹ |F_a⁻¹(t) − F_b⁻¹(t)| dt`` between the projected empirical
    distributions is taken, and the result is the mean over directions. With ``N == M`` this is
    the mean absolute difference of the sorted projections; with ``N != M`` the quantile
    functions are compared exactly.

    Args:
        a: ``[N, D]`` float tensor.
        b: ``[M, D]`` float tensor on the same device.
        num_projections: number of random directions (the paper uses 4 × 128 = 512).
        generator: source of the directions (``None``: a fresh generator seeded with 0).

    Returns:
        Scalar tensor (not scaled by 10³).

    Example:
        >>> a = torch.tensor([[0.0], [1.0]])
        >>> b = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> sliced_wasserstein(a, b, num_projections=8)  # 1-D: every direction is ±1
        tensor(1.)
        >>> sliced_wasserstein(b, b, num_projections=8)
        tensor(0.)
    """
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, Tensor) or value.ndim != 2 or value.shape[0] == 0:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"Expected argument `{name}` to have shape [N, D] with N >= 1, but got {shape}."
            )
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            "Expected arguments `a` and `b` to have the same number of columns D, but got"
            f" {a.shape[1]} and {b.shape[1]}."
        )
    num_projections = check_int(num_projections, "num_projections")
    directions = random_directions(a.shape[1], num_projections, generator).to(a.device, a.dtype)
    return sliced_wasserstein_sorted(
        sorted_projections(a, directions), sorted_projections(b.to(a.dtype), directions)
    )


def real_projections(
    real_descriptors: Mapping[int, Tensor],
    num_projections: int = 512,
    generator: torch.Generator | None = None,
) -> dict[int, list[Tensor]]:
    """Per level, the real set's sorted projections that :func:`swd_from_descriptors` would make.

    The real descriptors of each level are normalised and projected on the directions drawn from
    ``generator`` exactly as :func:`swd_from_descriptors` draws them, then sorted
    (:func:`sorted_projections`). Passed back as its ``real_projections`` with a generator in the
    same state, they spare the real side's sorts when one real set is compared again and again.

    Example:
        >>> real = {16: torch.randn(6, 3, 7, 7, generator=torch.Generator().manual_seed(0))}
        >>> fake = {16: torch.randn(4, 3, 7, 7, generator=torch.Generator().manual_seed(1))}
        >>> kept = real_projections(real, 8, torch.Generator().manual_seed(0))
        >>> again = swd_from_descriptors(real, fake, 8, torch.Generator().manual_seed(0),
        ...                              real_projections=kept)
        >>> bool(again.average == swd_from_descriptors(real, fake, 8).average)
        True
    """
    num_projections = check_int(num_projections, "num_projections")
    generator = _default_generator(generator)
    out = {}
    for resolution, real in real_descriptors.items():
        a = normalize_descriptors(real).flatten(1)
        directions = random_directions(a.shape[1], num_projections, generator)
        out[resolution] = sorted_projections(a, directions)
    return out


def swd_from_descriptors(
    real_descriptors: Mapping[int, Tensor],
    fake_descriptors: Mapping[int, Tensor],
    num_projections: int = 512,
    generator: torch.Generator | None = None,
    *,
    real_projections: Mapping[int, list[Tensor]] | None = None,
) -> SlicedWassersteinResult:
    """SWD ×10³ per level from already sampled (not yet normalised) descriptors.

    Each set is normalised on its own with :func:`normalize_descriptors`, then compared as in
    :func:`sliced_wasserstein`; levels are processed in the mapping's order, each drawing its own
    directions from ``generator``.

    Memory: besides the two normalised sets of a level, only the projections of one chunk of 128
    directions exist at a time (``128 × (N + M)`` values), whatever ``num_projections``.

    Args:
        real_descriptors: resolution → ``[N, C, p, p]`` descriptors of real images.
        fake_descriptors: resolution → ``[M, C, p, p]`` descriptors of generated images; same keys.
        num_projections: random directions per level.
        generator: source of the directions (``None``: a fresh generator seeded with 0).
        real_projections: the output of :func:`real_projections` for these real descriptors and
            a generator in the state of ``generator``; ``None``: computed here.

    Returns:
        The per-level values and their average.
    """
    if not real_descriptors or set(real_descriptors) != set(fake_descriptors):
        raise ValueError(
            "Expected arguments `real_descriptors` and `fake_descriptors` to have the same,"
            f" non-empty set of levels, but got {sorted(real_descriptors)} and"
            f" {sorted(fake_descriptors)}."
        )
    num_projections = check_int(num_projections, "num_projections")
    generator = _default_generator(generator)
    per_level = {}
    for resolution, real in real_descriptors.items():
        # With the real projections given, the real set itself is not needed any more.
        a = normalize_descriptors(real).flatten(1) if real_projections is None else None
        dtype = real.dtype if a is None else a.dtype
        b = normalize_descriptors(fake_descriptors[resolution]).flatten(1).to(dtype)
        directions = random_directions(b.shape[1], num_projections, generator).to(b)
        n, m = real.shape[0], b.shape[0]
        segments = None if n == m else _quantile_segments(n, m, b.device)
        total = torch.zeros((), dtype=torch.float64, device=b.device)
        # One chunk of directions at a time: only [chunk, N + M] projections exist at once.
        for i, chunk in enumerate(directions.T.split(_PROJECTIONS_PER_CHUNK)):
            if a is not None:
                sorted_a = sort_rows(chunk @ a.T, inplace=True)
            else:
                assert real_projections is not None
                sorted_a = real_projections[resolution][i]
            sorted_b = sort_rows(chunk @ b.T, inplace=True)
            if segments is None:
                # The fresh chunk takes the gaps in place; they are summed in float32 in runs of
                # at most 64 values (within 1e-6 of a float64 sum), the runs in float64.
                gaps = sorted_b.sub_(sorted_a).abs_().view(-1, math.gcd(n, _FLOAT32_RUN))
                total += gaps.sum(dim=1).sum(dtype=torch.float64) / n
            else:
                total += _sorted_w1_sum(sorted_a, sorted_b, segments)
            del sorted_a
        per_level[resolution] = (total / num_projections).to(dtype) * 1e3
        del a, b
    average = torch.stack(list(per_level.values())).mean()
    return SlicedWassersteinResult(per_level=per_level, average=average)


def swd(
    real_images: Tensor,
    fake_images: Tensor,
    num_descriptors_per_image: int = 128,
    patch_size: int = 7,
    num_projections: int = 512,
    min_resolution: int = 16,
    generator: torch.Generator | None = None,
) -> SlicedWassersteinResult:
    """Sliced Wasserstein distance between real and generated images, ×10³ per level and averaged.

    Real and fake neighbourhoods are cut at the same random positions (the generator is rewound
    between the two sets), so identical inputs give exactly 0 and two SWD values computed with the
    same seed differ only through the images. The two batches may differ in size.

    Args:
        real_images: ``[N, C, H, W]`` float tensor, ``H == W`` a power of two ``>= min_resolution``.
        fake_images: ``[M, C, H, W]`` float tensor of the same ``C, H, W``.
        num_descriptors_per_image: neighbourhoods per image per level (paper: 128).
        patch_size: neighbourhood side length (paper: 7).
        num_projections: random directions per level (paper: 4 × 128 = 512).
        min_resolution: side length of the coarsest pyramid level (paper: 16).
        generator: source of all randomness (``None``: a fresh generator seeded with 0).

    Returns:
        :class:`SlicedWassersteinResult` with ``per_level`` (finest first) and ``average``.
    """
    real_images = _check_images(real_images, "real_images", min_resolution)
    fake_images = _check_images(fake_images, "fake_images", min_resolution)
    if real_images.shape[1:] != fake_images.shape[1:]:
        raise ValueError(
            "Expected arguments `real_images` and `fake_images` to share [C, H, W], but got"
            f" {list(real_images.shape[1:])} and {list(fake_images.shape[1:])}."
        )
    generator = _default_generator(generator)
    real_pyramid = laplacian_pyramid(real_images, min_resolution)
    fake_pyramid = laplacian_pyramid(fake_images, min_resolution)
    real_descriptors, fake_descriptors = {}, {}
    for real_level, fake_level in zip(real_pyramid, fake_pyramid, strict=True):
        resolution = real_level.shape[-1]
        rewind = generator.get_state()
        real_descriptors[resolution] = sample_descriptors(
            real_level, num_descriptors_per_image, patch_size, generator
        )
        generator.set_state(rewind)
        fake_descriptors[resolution] = sample_descriptors(
            fake_level, num_descriptors_per_image, patch_size, generator
        )
    return swd_from_descriptors(real_descriptors, fake_descriptors, num_projections, generator)
