"""The SWD of many descriptor sets against one real set, batched: one artifact score per unit.

:mod:`~gan_dissect_callbacks.functional.swd` compares two sets of images. Scoring every unit of a
layer by the SWD of its own top-activating images needs hundreds of such comparisons against the
same real images, so here:

- descriptors are cut once per image (:func:`image_descriptors`) and shared by every set (unit)
  that selected the image;
- the real set is normalised, projected and sorted once per level (:func:`sort_real`) and shared
  by every set (:func:`swd_of_sets`), which equals one call of
  :func:`~gan_dissect_callbacks.functional.swd.swd_from_descriptors` per set with the same
  directions;
- sets are processed in chunks so that a block holds about 8 M values whatever the layer width
  (:func:`swd_of_index_sets`, :func:`unit_chunks`).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> real = flat_descriptors(image_descriptors(torch.rand(4, 3, 16, 16, generator=g), 8, g), 3)
    >>> fake = image_descriptors(torch.rand(3, 3, 16, 16, generator=g), 8, g)
    >>> sorted_real = sort_real(real, draw_directions(real, 16, g))
    >>> swd_of_index_sets(sorted_real, fake, torch.tensor([[0, 1], [1, 2]])).shape
    torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.functional.sorting import sort_rows
from gan_dissect_callbacks.functional.swd import (
    descriptor_corners,
    laplacian_pyramid,
    normalize_descriptors,
    patches_at,
    random_directions,
)

__all__ = [
    "SortedReal",
    "draw_directions",
    "flat_descriptors",
    "image_descriptor_corners",
    "image_descriptors",
    "image_descriptors_at",
    "sort_real",
    "swd_of_index_sets",
    "swd_of_sets",
    "unit_chunks",
    "unit_swd_scores",
]

#: Directions projected and sorted at a time when the real side is made.
_PROJECTIONS_PER_CHUNK = 128
#: Side of a descriptor (a neighbourhood of one pyramid level), as in Progressive GAN.
PATCH_SIZE = 7
#: The coarsest pyramid level.
MIN_RESOLUTION = 16
#: Upper bound on the elements of one block of the batched per-set SWD (float64: 64 MB each),
#: whatever the number of sets and of real descriptors.
_BLOCK_ELEMENTS = 1 << 23
#: Up to this many real descriptors per descriptor of a set, W1 sums every gap directly.
_MAX_DIRECT_RATIO = 32
#: Longest run of gaps summed in float32.
_FLOAT32_RUN = 64


def image_descriptors(
    images: Tensor, num_per_image: int, generator: torch.Generator
) -> dict[int, Tensor]:
    """Per pyramid level: ``[B, num_per_image, C·7·7]`` raw (unnormalised) descriptors per image.

    Example:
        >>> d = image_descriptors(torch.zeros(2, 3, 32, 32), 4, torch.Generator().manual_seed(0))
        >>> {resolution: tuple(x.shape) for resolution, x in d.items()}
        {32: (2, 4, 147), 16: (2, 4, 147)}
    """
    corners = image_descriptor_corners(images.shape[0], images.shape[-1], num_per_image, generator)
    return image_descriptors_at(images, corners)


def image_descriptor_corners(
    num_images: int, image_size: int, num_per_image: int, generator: torch.Generator
) -> dict[int, Tensor]:
    """The neighbourhoods :func:`image_descriptors` cuts from ``num_images`` images, drawn alone.

    Per pyramid level (finest first, the order of the draws), ``[B, num_per_image]`` corners of
    :func:`~gan_dissect_callbacks.functional.swd.descriptor_corners`. With them the descriptors
    of a large set can be cut batch by batch (:func:`image_descriptors_at` on each batch's rows)
    and equal those of one call on the whole set, without holding its images.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> corners = image_descriptor_corners(2, 32, 4, g)
        >>> {resolution: tuple(c.shape) for resolution, c in corners.items()}
        {32: (2, 4), 16: (2, 4)}
    """
    corners, size = {}, image_size
    while True:  # the sizes of `laplacian_pyramid`'s levels
        corners[size] = descriptor_corners(
            num_images, (size, size), num_per_image, PATCH_SIZE, generator
        )
        if size <= MIN_RESOLUTION:
            return corners
        size //= 2


def image_descriptors_at(images: Tensor, corners: Mapping[int, Tensor]) -> dict[int, Tensor]:
    """:func:`image_descriptors` of ``images`` at the given corners (one row per image).

    Example:
        >>> images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        >>> corners = image_descriptor_corners(3, 32, 4, torch.Generator().manual_seed(0))
        >>> whole = image_descriptors(images, 4, torch.Generator().manual_seed(0))
        >>> rows = {res: c[1:] for res, c in corners.items()}
        >>> torch.equal(image_descriptors_at(images[1:], rows)[16], whole[16][1:])
        True
    """
    b = images.shape[0]
    out = {}
    for level in laplacian_pyramid(images.float(), MIN_RESOLUTION):
        resolution = level.shape[-1]
        d = patches_at(level, corners[resolution], PATCH_SIZE)
        out[resolution] = d.reshape(b, corners[resolution].shape[1], -1)
    return out


def flat_descriptors(per_image: Mapping[int, Tensor], channels: int) -> dict[int, Tensor]:
    """``[B, n, D]`` per level → ``[B·n, C, 7, 7]``, the layout of the SWD functions.

    Example:
        >>> tuple(flat_descriptors({16: torch.zeros(2, 4, 147)}, 3)[16].shape)
        (8, 3, 7, 7)
    """
    return {res: d.reshape(-1, channels, PATCH_SIZE, PATCH_SIZE) for res, d in per_image.items()}


def _normalize_sets(sets: Tensor, channels: int) -> Tensor:
    """Normalise each set ``[S, M, D]`` per colour channel by its own mean and std."""
    s, m, _ = sets.shape
    x = sets.reshape(s, m, channels, -1)
    mean = x.mean(dim=(1, 3), keepdim=True)
    std = x.std(dim=(1, 3), keepdim=True, unbiased=False)
    return (x - mean).div_(torch.where(std > 0, std, torch.ones_like(std))).reshape(s, m, -1)


@dataclass(frozen=True)
class SortedReal:
    """The real set of every level, normalised, projected on the level's directions and sorted.

    Made once by :func:`sort_real` and shared by every fake set compared with it: the sort of the
    real projections is most of the cost of one comparison. Memory: ``num_projections × N``
    float32 values per level (64 MiB per level for 512 directions and 32,768 descriptors).

    Attributes:
        directions: resolution → ``[D, P]`` unit directions (columns).
        projections: resolution → ``[P, N]``; row ``p`` holds the real set's projections on
            direction ``p``, sorted.
        channels: colour channels of a descriptor (each fake set is normalised per channel).
    """

    directions: dict[int, Tensor]
    projections: dict[int, Tensor]
    channels: int


def sort_real(
    real_descriptors: Mapping[int, Tensor], directions: Mapping[int, Tensor]
) -> SortedReal:
    """Normalise, project and sort the real descriptors ``[N, C, p, p]`` of every level.

    Example:
        >>> real = {16: torch.randn(5, 3, 7, 7, generator=torch.Generator().manual_seed(0))}
        >>> sorted_real = sort_real(real, draw_directions(real, 4, torch.Generator()))
        >>> p = sorted_real.projections[16]
        >>> tuple(p.shape), bool((p[:, 1:] >= p[:, :-1]).all())
        ((4, 5), True)
    """
    projections, level_directions = {}, {}
    for resolution, real in real_descriptors.items():
        flat = normalize_descriptors(real.float()).flatten(1)
        level_directions[resolution] = d = directions[resolution].to(flat)
        # Sorted chunk by chunk into place: no list of chunks beside the result.
        out = flat.new_empty(d.shape[1], flat.shape[0])
        for first in range(0, d.shape[1], _PROJECTIONS_PER_CHUNK):
            chunk = d[:, first : first + _PROJECTIONS_PER_CHUNK]
            out[first : first + chunk.shape[1]] = sort_rows(chunk.T @ flat.T, inplace=True)
        projections[resolution] = out
    channels = next(iter(real_descriptors.values())).shape[1]
    return SortedReal(level_directions, projections, channels)


def _batched_sliced_w1(real_sorted: Tensor, sets: Tensor, directions: Tensor) -> Tensor:
    """Sliced W1 between a real set and each set of ``sets [S, M, D]`` (shared directions).

    ``real_sorted [P, N]`` holds the real set's sorted projections on the ``P`` columns of
    ``directions``. Equals :func:`~gan_dissect_callbacks.functional.swd.sliced_wasserstein` of the
    real set and ``sets[s]`` with the same directions, for every ``s``. When ``M`` divides ``N``
    (verification: ``M == N``; unit scoring: ``N = 16 M``) it is the mean gap between each real
    value and the set value of the same quantile, summed block by block of ``N / M`` real values
    in closed form where the set value lies outside the block. Otherwise, at a cost that does not
    grow with ``S · N``: along one direction the exact ``∫₀¹ |F_a⁻¹(t) − F_b⁻¹(t)| dt`` splits
    into the ``M`` pieces where the set's quantile function ``F_a⁻¹`` is the constant ``a_i``; on
    each the real quantile function is integrated in closed form from its running integral
    ``G(t) = ∫₀ᵗ F_b⁻¹``, cut where it crosses ``a_i`` (found by a binary search).
    """
    n, (s, m, _) = real_sorted.shape[1], sets.shape
    num_projections = directions.shape[1]
    total = torch.zeros(s, dtype=torch.float64, device=real_sorted.device)
    if n == m:
        # Both quantile functions step at the same points: W1 = mean_j |a_j − b_j|.
        # Gaps are summed in float32 in runs of at most 64 (well within 1e-5), the runs in float64.
        run = math.gcd(m, _FLOAT32_RUN)
        per_chunk = max(1, min(num_projections, _BLOCK_ELEMENTS // (n * s)))
        set_chunk = max(1, min(s, _BLOCK_ELEMENTS // (per_chunk * n)))
        for first in range(0, num_projections, per_chunk):
            chunk = directions[:, first : first + per_chunk]
            b = real_sorted[first : first + per_chunk].unsqueeze(0)
            for start in range(0, s, set_chunk):
                # [S', P', M]: rows of one set and one direction are contiguous for the sort.
                a = sort_rows(
                    chunk.T @ sets[start : start + set_chunk].transpose(1, 2), inplace=True
                )
                gaps = a.sub_(b).abs_().view(*a.shape[:2], -1, run).sum(dim=3)
                total[start : start + set_chunk] += gaps.sum(dim=(1, 2), dtype=torch.float64) / n
        return (total / num_projections).to(real_sorted.dtype)
    if n % m == 0 and n // m <= _MAX_DIRECT_RATIO:
        # Each a_i faces the block of r = N / M real values b_(ri) … b_(ri + r − 1), and
        # W1 = Σ_i Σ_block |a_i − b_j| / N. Outside the block's range that sum is |r·a_i − Σ block|;
        # only the few a_i that fall inside their block need the gaps one by one.
        r = n // m
        per_chunk = max(1, min(num_projections, _BLOCK_ELEMENTS // (n + m * s)))
        set_chunk = max(1, min(s, _BLOCK_ELEMENTS // (per_chunk * m)))
        for first in range(0, num_projections, per_chunk):
            chunk = directions[:, first : first + per_chunk]
            blocks = real_sorted[first : first + per_chunk].reshape(-1, m, r)  # [P', M, r]
            block_sums = blocks.sum(dim=2, dtype=torch.float64).to(blocks.dtype)
            low, high = blocks[..., 0], blocks[..., -1]
            for start in range(0, s, set_chunk):
                a = sort_rows(
                    chunk.T @ sets[start : start + set_chunk].transpose(1, 2), inplace=True
                )
                inside = ((a > low) & (a < high)).nonzero(as_tuple=True)
                gaps = (a[inside][:, None] - blocks[inside[1], inside[2]]).abs_().sum(dim=1)
                sums = a.mul_(r).sub_(block_sums).abs_()  # [S', P', M]
                sums.index_put_(inside, gaps)
                # Sums of up to M values in float32 (pairwise: within 1e-6), the rest in float64.
                per_set = sums.sum(dim=2).sum(dim=1, dtype=torch.float64)
                total[start : start + set_chunk] += per_set / n
        return (total / num_projections).to(real_sorted.dtype)
    per_chunk = max(1, min(num_projections, _BLOCK_ELEMENTS // (n + m * s)))
    set_chunk = max(1, min(s, _BLOCK_ELEMENTS // (per_chunk * m)))
    edges = torch.arange(m + 1, dtype=torch.float64, device=real_sorted.device) / m
    for first in range(0, num_projections, per_chunk):
        chunk = directions[:, first : first + per_chunk]
        b = real_sorted[first : first + per_chunk].double()  # [P, N]
        running = torch.cat([b.new_zeros(b.shape[0], 1), b.cumsum(dim=1) / n], dim=1)

        def integral_to(t: Tensor, b: Tensor = b, running: Tensor = running) -> Tensor:
            """``G(t)`` for ``t [P, X]`` in [0, 1]: piecewise linear between multiples of 1/N."""
            x = t * n
            j = x.floor().clamp(max=n - 1).long()
            return running.gather(1, j) + b.gather(1, j) * (x - j) / n

        at_edges = integral_to(edges.expand(b.shape[0], -1))  # [P, M + 1]
        for start in range(0, s, set_chunk):
            a = (sets[start : start + set_chunk] @ chunk).permute(2, 0, 1)  # [P, S', M]
            a = sort_rows(a.contiguous()).double()
            p, count = a.shape[0], a.shape[1]
            below = torch.searchsorted(b, a.reshape(p, -1)).view(p, count, m)  # #{b < a_i}
            crossing = (below.double() / n).clamp(min=edges[:-1], max=edges[1:])
            at_crossing = integral_to(crossing.reshape(p, -1)).view(p, count, m)
            low, high = at_edges[:, None, :-1], at_edges[:, None, 1:]
            pieces = (
                a * (crossing - edges[:-1])
                - (at_crossing - low)
                + (high - at_crossing)
                - a * (edges[1:] - crossing)
            )
            total[start : start + set_chunk] += pieces.sum(dim=(0, 2))
    return (total / num_projections).to(real_sorted.dtype)


def unit_swd_scores(
    real_descriptors: Mapping[int, Tensor],
    image_descriptors: Mapping[int, Tensor],
    top_samples: Tensor,
    num_projections: int = 128,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SWD ×10³ (averaged over levels) between real images and each unit's top images.

    For unit ``u`` the fake set is the descriptors of the images ``top_samples[u]``; it is
    normalised on its own, as the real set is, exactly as in
    :func:`~gan_dissect_callbacks.functional.swd.swd_from_descriptors`. Levels are processed in
    the mapping's order and each draws ``num_projections`` directions from ``generator``, shared by
    all units, so ``unit_swd_scores(...)[u]`` equals
    ``swd_from_descriptors(real, descriptors of unit u, num_projections, same generator).average``
    up to float rounding. Work is batched over units; memory is bounded by chunking.

    Args:
        real_descriptors: resolution → ``[N, C, p, p]`` descriptors of real images.
        image_descriptors: resolution → ``[B, n, C·p·p]`` descriptors of each generated image
            (``n`` per image); same resolutions.
        top_samples: ``[U, k]`` int64 indices into the ``B`` images.
        num_projections: random directions per level.
        generator: source of the directions (``None``: a fresh generator seeded with 0).

    Returns:
        ``[U]`` float tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> real = {16: torch.randn(256, 3, 7, 7, generator=g)}
        >>> images = {16: torch.randn(4, 64, 147, generator=g)}  # 4 images, 64 descriptors each
        >>> images[16][3] = images[16][3] ** 3  # image 3 has heavy-tailed local statistics
        >>> top = torch.tensor([[0, 1], [1, 2], [2, 3]])  # unit 2's top images include it
        >>> unit_swd_scores(real, images, top, 32, torch.Generator().manual_seed(0)).round()
        tensor([135., 155., 243.])
    """
    if set(real_descriptors) != set(image_descriptors) or not real_descriptors:
        raise ValueError(
            "Expected arguments `real_descriptors` and `image_descriptors` to have the same,"
            f" non-empty set of levels, but got {sorted(real_descriptors)} and"
            f" {sorted(image_descriptors)}."
        )
    if not isinstance(top_samples, Tensor) or top_samples.ndim != 2 or top_samples.numel() == 0:
        shape = list(top_samples.shape) if isinstance(top_samples, Tensor) else top_samples
        raise ValueError(
            f"Expected argument `top_samples` to have shape [U, k] with U, k >= 1, but got {shape}."
        )
    num_projections = check_int(num_projections, "num_projections")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    for per_image in image_descriptors.values():
        num_images = per_image.shape[0]
        if int(top_samples.max()) >= num_images or int(top_samples.min()) < 0:
            raise ValueError(
                f"Expected `top_samples` to index the {num_images} images, but got indices in"
                f" [{int(top_samples.min())}, {int(top_samples.max())}]."
            )
    sorted_real = sort_real(
        real_descriptors, draw_directions(real_descriptors, num_projections, generator)
    )
    return swd_of_index_sets(sorted_real, image_descriptors, top_samples)


def draw_directions(
    real_descriptors: Mapping[int, Tensor], num_projections: int, generator: torch.Generator
) -> dict[int, Tensor]:
    """Per level, in the mapping's order, the directions ``swd_from_descriptors`` would draw.

    Example:
        >>> real = {32: torch.zeros(5, 3, 7, 7), 16: torch.zeros(5, 3, 7, 7)}
        >>> d = draw_directions(real, 4, torch.Generator().manual_seed(0))
        >>> {resolution: tuple(x.shape) for resolution, x in d.items()}
        {32: (147, 4), 16: (147, 4)}
    """
    return {
        res: random_directions(real[0].numel(), num_projections, generator)
        for res, real in real_descriptors.items()
    }


def swd_of_sets(real: SortedReal, sets: Mapping[int, Tensor]) -> Tensor:
    """SWD ×10³ averaged over levels between the real set and each fake set ``[S, M, D]``.

    Each set is normalised on its own, as in ``swd_from_descriptors``; all sets share the
    directions of a level and the real set's sorted projections (:func:`sort_real`).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> real = {16: torch.randn(32, 3, 7, 7, generator=g)}
        >>> same = real[16].reshape(32, 147)
        >>> sets = {16: torch.stack([same, same**3])}  # the real set itself, and a distorted one
        >>> (swd_of_sets(sort_real(real, draw_directions(real, 8, g)), sets) > 1).tolist()
        [False, True]
    """
    per_level = []
    for resolution, real_sorted in real.projections.items():
        normalized = _normalize_sets(sets[resolution].float(), real.channels)
        directions = real.directions[resolution]
        per_level.append(_batched_sliced_w1(real_sorted, normalized, directions) * 1e3)
    return torch.stack(per_level).mean(dim=0)


def unit_chunks(num: int, images_per_unit: int, values_per_image: int) -> Iterator[slice]:
    """Slices of units whose descriptor sets together hold about 8 M values.

    Example:
        >>> list(unit_chunks(3, 2, 1 << 21))
        [slice(0, 2, None), slice(2, 3, None)]
    """
    size = max(1, _BLOCK_ELEMENTS // max(1, images_per_unit * values_per_image))
    for start in range(0, num, size):
        yield slice(start, min(num, start + size))


def swd_of_index_sets(real: SortedReal, per_image: Mapping[int, Tensor], rows: Tensor) -> Tensor:
    """SWD ×10³ of the descriptor set of each row of image indices ``rows [S, k]``, in chunks.

    ``per_image`` holds each image's descriptors ``[B, n, D]`` per level
    (:func:`image_descriptors`); row ``s`` selects the ``k`` images of set ``s``.
    """
    first = next(iter(per_image.values()))
    out = []
    for chunk in unit_chunks(rows.shape[0], rows.shape[1], first[0].numel()):
        picked = rows[chunk]
        sets = {
            res: d[picked.reshape(-1)].reshape(picked.shape[0], -1, d.shape[-1])
            for res, d in per_image.items()
        }
        out.append(swd_of_sets(real, sets))
    return torch.cat(out)
