"""Unit × concept dissection: streaming counts (update) and scores (compute).

The pure half of :class:`~gan_dissect_callbacks.metrics.unit_concept_iou.UnitConceptIoU`:

- :func:`unit_concept_levels` picks each unit's candidate threshold levels from data;
- :func:`unit_concept_update` turns one batch of activations ``[B, U, h, w]`` and concept masks
  ``[B, C, H, W]`` into fixed-size pixel counts at those levels (:class:`UnitConceptCounts`);
  counts of several batches or processes add up;
- :func:`unit_concept_compute` turns counts into IoUs under both threshold rules
  (:class:`UnitConceptIoUResult`);
- :func:`unit_concept_iou` does all three on tensors held in memory.

Counting, per batch and without per-unit or per-concept Python loops:

1. activations are scaled per unit by the power of two ``2^-e_u`` of the unit's level grid
   (exact) and upsampled to ``H×W`` (:mod:`~gan_dissect_callbacks.functional.upsample`);
2. ``ceil`` gives each value's grid cell and a per-unit lookup table its *bin*, the number of
   levels strictly below it — bit-for-bit the decisions ``value > level`` of a brute-force
   comparison, at a fraction of the cost of a binary search;
3. each pixel's set of present concepts becomes a *label-combination* id (hierarchical
   multi-label masks have few distinct combinations ``K``; past 64 concepts the pixel's code
   words are hashed into one int64, and a collision, checked for, falls back to comparing
   rows); one ``bincount`` over (combination, unit, bin) per block of units and
   ``2**21`` values, then a ``[K, C]`` matrix product expands combinations to concepts. When
   masks have many distinct combinations it counts (pixel, concept) pairs instead; both are
   exact. Counts are added into the caller's states in place: a batch allocates no
   ``[U, L+1, C]`` tensor, only per-block ones.

Calibrating counts every pixel at the candidate levels; the metric counts the calibration
samples jointly with the concepts in that same pass and merges each block's candidate bins into
the final levels' bins (a subset), so those samples are counted once (``_calibrated_update``).

On the CPU with numba installed (the ``fast`` extra), the binning and counting of steps 2–3 run
as one compiled pass per value (:mod:`~gan_dissect_callbacks.functional._counting`); the counts
are identical.

Exactness holds for all finite float32 activations except one corner: a non-zero value so
small that scaling it by ``2^-e_u`` leaves the normal float range (below ``2^-126`` times the
grid step, i.e. ~1e-42 for a unit whose levels span ~1) may be counted as if it were 0.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> activations = torch.rand(4, 2, 4, 4, generator=g)
    >>> masks = torch.rand(4, 3, 8, 8, generator=g) > 0.5
    >>> result = unit_concept_iou(activations, masks, num_levels=20, num_dense_levels=5)
    >>> result.iou_quantile.shape, result.iqr.shape, result.num_pixels
    (torch.Size([2, 3]), torch.Size([2, 3]), 256)
    >>> result.best_concept("iqr")[0]
    tensor([2, 0])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from gan_dissect_callbacks.functional import _counting
from gan_dissect_callbacks.functional.iou import iou_from_counts
from gan_dissect_callbacks.functional.threshold import (
    _check_levels,
    candidate_fractions,
    counts_above,
    dense_fractions,
    iqr_rule,
    nearest_fraction_index,
    quantile_levels,
    quantile_rule,
    snap_levels,
)
from gan_dissect_callbacks.functional.upsample import UNIT_BLOCK, upsample_at, upsample_unit_block

__all__ = [
    "Counting",
    "UnitConceptCounts",
    "UnitConceptIoUResult",
    "unit_concept_compute",
    "unit_concept_iou",
    "unit_concept_levels",
    "unit_concept_update",
]

#: How :func:`unit_concept_update` counts joint occurrences (all exact; only speed differs).
Counting = Literal["auto", "combinations", "pairs"]

# Values (pixels × units) handled per tensor operation in the counting loop: large enough to
# amortise Python overhead, small enough to stay in cache.
_CHUNK_VALUES = 2**20
# Bin indices collected per bincount: a bincount zeroes its whole output (K·U·(L+1) bins when
# counting by combinations), so counting many values at once pays that once, not per chunk.
_BINCOUNT_VALUES = 2**21
# Largest grid (cells per unit) accepted from explicit levels.
_MAX_GRID_WIDTH = 2**17
# Dense candidates are picked among this many levels spread over a band this much wider than
# the dense targets (see unit_concept_levels).
_FINE_LEVELS = 2048
_FINE_MARGIN = 1.5
# The one-pass calibration merges a block's bins at the candidate levels when they are at most
# this share of the batch's pixels (see _calibrated_update); else it counts twice.
_ONE_PASS_BINS = 0.5
# unit_concept_compute works on blocks of units of about this many (unit, level, concept) counts.
_COMPUTE_TABLES = 2**20


@dataclass(frozen=True)
class UnitConceptCounts:
    """Pixel counts of one or more batches at fixed levels; counts of disjoint data add up.

    With ``L`` levels a unit's values fall in ``L + 1`` bins: bin ``b`` holds values ``v`` with
    ``level[b-1] < v <= level[b]`` (bin 0 all values ``<= level[0]``, bin ``L`` all values above
    the last level). Counts above each level are the sums of higher bins
    (:func:`~gan_dissect_callbacks.functional.threshold.counts_above`).

    Attributes:
        unit_bins: ``[U, L+1]`` int64, pixels per unit and bin.
        joint_bins: ``[U, L+1, C]`` int64, pixels per unit and bin where each concept is present.
        concept_pixels: ``[C]`` int64, pixels where each concept is present.
        num_pixels: ``[]`` int64, all pixels (samples × H × W).
        num_samples: ``[]`` int64, samples.
    """

    unit_bins: Tensor
    joint_bins: Tensor
    concept_pixels: Tensor
    num_pixels: Tensor
    num_samples: Tensor

    def __add__(self, other: UnitConceptCounts) -> UnitConceptCounts:
        if not isinstance(other, UnitConceptCounts):
            return NotImplemented
        if self.joint_bins.shape != other.joint_bins.shape:
            raise ValueError(
                f"Expected counts of the same shape, but got {list(self.joint_bins.shape)} "
                f"and {list(other.joint_bins.shape)}."
            )
        return UnitConceptCounts(
            self.unit_bins + other.unit_bins,
            self.joint_bins + other.joint_bins,
            self.concept_pixels + other.concept_pixels,
            self.num_pixels + other.num_pixels,
            self.num_samples + other.num_samples,
        )


@dataclass(frozen=True)
class UnitConceptIoUResult:
    """Dissection scores of ``U`` units against ``C`` concepts under both threshold rules.

    Concepts covering less than ``min_concept_fraction`` of all pixels are ignored: their IoU
    and IQR are 0, so they are never a unit's best concept.

    Attributes:
        levels: ``[U, L]`` float32 candidate levels the counts were taken at.
        threshold_quantile: ``[U]`` float32, each unit's quantile-rule threshold.
        fraction_above: ``[U]`` float64, fraction of all pixels above that threshold (how close
            the rule came to ``1 - quantile``).
        iou_quantile: ``[U, C]`` float64, IoU at the quantile-rule threshold.
        threshold_iqr: ``[U, C]`` float32, level maximising the IQR of each unit-concept pair.
        iqr: ``[U, C]`` float64, that maximal information quality ratio.
        iou_iqr: ``[U, C]`` float64, IoU at the pair's IQR threshold.
        concept_fraction: ``[C]`` float64, fraction of all pixels where each concept is present.
        concept_present: ``[C]`` bool, ``concept_fraction >= min_concept_fraction``.
        num_samples: number of samples counted.
        num_pixels: number of pixels counted (samples × H × W).
        quantile: the quantile rule's target.
    """

    levels: Tensor
    threshold_quantile: Tensor
    fraction_above: Tensor
    iou_quantile: Tensor
    threshold_iqr: Tensor
    iqr: Tensor
    iou_iqr: Tensor
    concept_fraction: Tensor
    concept_present: Tensor
    num_samples: int
    num_pixels: int
    quantile: float

    def best_concept(self, rule: Literal["quantile", "iqr"] = "quantile") -> tuple[Tensor, Tensor]:
        """Each unit's best concept and its IoU under ``rule``.

        Args:
            rule: ``"quantile"`` ranks :attr:`iou_quantile`, ``"iqr"`` ranks :attr:`iou_iqr`.

        Returns:
            ``(concept index [U] int64, IoU [U] float64)``; ties go to the lower index.
        """
        if rule == "quantile":
            iou = self.iou_quantile
        elif rule == "iqr":
            iou = self.iou_iqr
        else:
            raise ValueError(
                f"Expected argument `rule` to be one of 'quantile', 'iqr', but got {rule!r}."
            )
        index = iou.argmax(dim=1)
        return index, iou.gather(1, index[:, None]).squeeze(1)


@dataclass(frozen=True)
class _LevelBins:
    """The levels' power-of-two grids and lookup tables from grid cell to bin."""

    scale: Tensor  # [U] float32, 1 / grid step
    low: Tensor  # [U] float32, grid index of the lowest level
    high: Tensor  # [U] float32, grid index of the highest level + 1
    offset: Tensor  # [U] float32, (u % UNIT_BLOCK) · width - low
    table: Tensor  # [U, width] int32, (u % UNIT_BLOCK) · (L + 1) + bin
    width: int
    num_levels: int

    @functools.cached_property
    def kernel_table(self) -> Tensor:
        """``table`` in 16 bits where its entries fit (their tables then share the cache)."""
        if UNIT_BLOCK * (self.num_levels + 1) <= 2**16:
            return self.table.to(torch.uint16)
        return self.table


def _grid_steps(levels: Tensor) -> Tensor:
    """Per unit, the largest power of two dividing every level (1 if all levels are 0)."""
    mantissa, exponent = torch.frexp(levels.double())
    integer = (mantissa.abs() * 2.0**53).long()  # exact: float32 has 24 significant bits
    lowest_bit = integer & -integer
    value = torch.ldexp(lowest_bit.double(), exponent - 53)
    value = torch.where(levels == 0, torch.full_like(value, math.inf), value)
    step = value.min(dim=1).values
    return torch.where(torch.isinf(step), torch.ones_like(step), step)


def _level_bins(levels: Tensor) -> _LevelBins:
    _check_levels(levels)
    if levels.dtype != torch.float32:
        raise TypeError(f"Expected argument `levels` to be float32, but got {levels.dtype}.")
    units, num_levels = levels.shape
    step = _grid_steps(levels)
    grid = levels.double() / step[:, None]
    low, high = grid.min(dim=1).values, grid.max(dim=1).values
    width = int((high - low).max().item()) + 2 if units else 2
    too_fine = (
        (step < 2.0**-126) | (step > 2.0**126) | (torch.maximum(low.abs(), high.abs()) > 2.0**22)
    )
    if width > _MAX_GRID_WIDTH or bool(too_fine.any()):
        raise ValueError(
            "Expected argument `levels` on a coarse power-of-two grid per unit, but some unit's "
            "levels are not; pass them through `snap_levels` first."
        )
    cells = (grid - low[:, None]).long() + 1
    per_cell = torch.zeros((units, width), dtype=torch.int32, device=levels.device)
    per_cell.scatter_add_(1, cells, torch.ones_like(cells, dtype=torch.int32))
    position = torch.arange(units, device=levels.device) % UNIT_BLOCK
    table = (
        per_cell.cumsum(dim=1, dtype=torch.int32)
        + (position * (num_levels + 1)).to(torch.int32)[:, None]
    )
    return _LevelBins(
        scale=(1.0 / step).float(),
        low=low.float(),
        high=(high + 1).float(),
        offset=(position * width - low).float(),
        table=table,
        width=width,
        num_levels=num_levels,
    )


def _label_combinations(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Each pixel's set of concepts as an id: ``(inverse [N] int64, combinations [K, C] bool)``.

    Pixels of ``[B, C, H, W]`` masks are numbered ``b·H·W + y·W + x``; ``combinations[inverse]``
    equals the masks as a ``[N, C]`` matrix (that matrix is never built).
    """
    codes = _code_words(masks)
    # Many concepts: one int64 hash per pixel instead of a far slower row-wise unique.
    key = codes[:, 0] if codes.shape[1] == 1 else _hash_rows(codes)
    inverse = torch.unique(key, return_inverse=True)[1]
    first = _first_rows(inverse)
    if codes.shape[1] > 1 and not bool((codes[first][inverse] == codes).all()):  # a collision
        inverse = torch.unique(codes, dim=0, return_inverse=True)[1]
        first = _first_rows(inverse)
    height, width = masks.shape[2:]
    sample, rest = first // (height * width), first % (height * width)
    return inverse, masks[sample, :, rest // width, rest % width]


def _code_words(masks: Tensor) -> Tensor:
    """``[N, words]`` int64 words whose bits are each pixel's concepts (``[B, C, H, W]`` masks).

    Built a byte (8 concepts) at a time in the words' own ``[B, H, W, bytes]`` layout: one pass
    per 8 concepts, and no ``[N, C]`` copy of the masks.
    """
    batch, concepts, height, width = masks.shape
    words = max(1, -(-concepts // 64))
    codes = torch.zeros((batch, height, width, 8 * words), dtype=torch.uint8, device=masks.device)
    bits = (1 << torch.arange(8, device=masks.device)).to(torch.uint8)[:, None, None]
    for byte in range(-(-concepts // 8)):
        part = masks[:, 8 * byte : 8 * (byte + 1)]
        codes[..., byte] = (part.to(torch.uint8) * bits[: part.shape[1]]).sum(1, dtype=torch.uint8)
    return codes.view(torch.int64).view(-1, words)


# The splitmix64 finaliser (a bijection of 64-bit words), as signed int64 constants.
_MIX = (-4658895280553007687, -7723592293110705685)  # 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(x: Tensor) -> Tensor:
    """Scramble int64 words so that sparse bit patterns spread over all bits (splitmix64)."""
    for shift, multiplier in ((30, _MIX[0]), (27, _MIX[1])):
        x = (x ^ ((x >> shift) & ((1 << (64 - shift)) - 1))) * multiplier
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def _hash_rows(codes: Tensor) -> Tensor:
    """One int64 per row of ``[N, words]`` int64 codes; equal rows, equal hashes."""
    hashed = _mix(codes[:, 0])
    for word in range(1, codes.shape[1]):
        hashed = _mix(hashed ^ codes[:, word])
    return hashed


def _first_rows(inverse: Tensor) -> Tensor:
    """For each group of a ``unique(..., return_inverse=True)``, the first row in it."""
    rows = torch.arange(inverse.shape[0], device=inverse.device)
    first = torch.full((int(inverse.max()) + 1,), inverse.shape[0], device=inverse.device)
    return first.scatter_reduce_(0, inverse, rows, "amin")


def _check_inputs(
    activations: Tensor,
    masks: Tensor,
    *,
    num_units: int | None = None,
    num_concepts: int | None = None,
    size: tuple[int, int] | None = None,
) -> None:
    """One clear error for the first problem with a batch of activations and masks."""
    if not isinstance(activations, Tensor):
        raise TypeError(
            f"Expected argument `activations` to be a tensor, but got {type(activations).__name__}."
        )
    if not isinstance(masks, Tensor):
        raise TypeError(
            f"Expected argument `masks` to be a tensor, but got {type(masks).__name__}."
        )
    if activations.ndim != 4:
        raise ValueError(
            f"Expected argument `activations` of shape [B, U, h, w], "
            f"but got {list(activations.shape)}."
        )
    if masks.ndim != 4:
        raise ValueError(
            f"Expected argument `masks` of shape [B, C, H, W], but got {list(masks.shape)}."
        )
    if not activations.is_floating_point():
        raise TypeError(
            f"Expected argument `activations` to be a float tensor, but got {activations.dtype}."
        )
    if masks.dtype != torch.bool:
        raise TypeError(f"Expected argument `masks` to be a bool tensor, but got {masks.dtype}.")
    if activations.shape[0] == 0:
        raise ValueError("Expected a non-empty batch, but `activations` has 0 samples.")
    if masks.shape[0] != activations.shape[0]:
        raise ValueError(
            f"Expected `activations` and `masks` with the same batch size, but got "
            f"{activations.shape[0]} and {masks.shape[0]}."
        )
    if min(activations.shape[2:]) == 0 or min(masks.shape[2:]) == 0:
        raise ValueError(
            f"Expected non-empty spatial sizes, but got `activations` {list(activations.shape)} "
            f"and `masks` {list(masks.shape)}."
        )
    if num_units is not None and activations.shape[1] != num_units:
        raise ValueError(
            f"Expected `activations` with {num_units} units, but got {activations.shape[1]}."
        )
    if num_concepts is not None and masks.shape[1] != num_concepts:
        raise ValueError(
            f"Expected `masks` with {num_concepts} concepts, but got {masks.shape[1]}."
        )
    if size is not None and tuple(masks.shape[2:]) != tuple(size):
        raise ValueError(
            f"Expected `masks` of size {tuple(size)}, but got {tuple(masks.shape[2:])}."
        )
    if not bool(torch.isfinite(activations).all()):
        raise ValueError("Expected finite `activations`, but got NaN or Inf values.")


def _pick_counting(
    counting: str, combos: int, num_levels: int, pixels: int, concepts: int, pairs: int, chunks: int
) -> bool:
    """Whether to count by label combinations (else by pixel-concept pairs)."""
    if counting not in ("auto", "combinations", "pairs"):
        raise ValueError(
            "Expected argument `counting` to be one of 'auto', 'combinations', 'pairs', "
            f"but got {counting!r}."
        )
    if counting != "auto":
        return counting == "combinations"
    # Rough per-unit costs beyond the shared bincount over all pixels: combinations pay for
    # zeroing/adding K·(L+1) bins per chunk and the [K, C] product, pairs pay per present label.
    per_combo = combos * (num_levels + 1) * (2 * chunks + concepts / 4 + 1)
    per_pair = 3 * pairs + concepts * (num_levels + 1) * 2 * chunks
    return per_combo <= per_pair and combos * UNIT_BLOCK * (num_levels + 1) < 2**31


def _empty_counts(
    units: int, num_levels: int, concepts: int, device: torch.device
) -> UnitConceptCounts:
    def zeros(*shape: int) -> Tensor:
        return torch.zeros(shape, dtype=torch.int64, device=device)

    return UnitConceptCounts(
        zeros(units, num_levels + 1), zeros(units, num_levels + 1, concepts), zeros(concepts),
        zeros(), zeros(),
    )  # fmt: skip


class _Bincount:
    """``bincount`` of int32 indices in ``[0, size)`` given ``[rows, width]`` at a time.

    Callers fill :meth:`slot` views in place; the indices are counted ``_BINCOUNT_VALUES`` at
    a time, so one bincount (and the zeroing of its output) serves many chunks.
    """

    def __init__(self, size: int, width: int, device: torch.device) -> None:
        self.size = size
        self.buffer = torch.empty(
            (max(1, _BINCOUNT_VALUES // max(1, width)), width), dtype=torch.int32, device=device
        )
        self.filled = 0
        self.total: Tensor | None = None

    def slot(self, rows: int) -> Tensor:
        """A ``[rows, width]`` view of the buffer to write indices into."""
        if self.filled + rows > self.buffer.shape[0]:
            self._flush()
        if rows > self.buffer.shape[0]:
            self.buffer = self.buffer.new_empty((rows, self.buffer.shape[1]))
        view = self.buffer[self.filled : self.filled + rows]
        self.filled += rows
        return view

    def _flush(self) -> None:
        if not self.filled:
            return
        counts = torch.bincount(self.buffer[: self.filled].view(-1), minlength=self.size)
        self.total = counts if self.total is None else self.total.add_(counts)
        self.filled = 0

    def counts(self) -> Tensor:
        """``[size]`` int64 counts of every index given."""
        self._flush()
        if self.total is None:
            return torch.zeros(self.size, dtype=torch.int64, device=self.buffer.device)
        return self.total


def _cell_indices(
    cells: Tensor, low: Tensor, high: Tensor, offset: Tensor, out: Tensor | None = None
) -> Tensor:
    """Flat ``(unit, grid cell)`` int32 indices of grid-scaled values ``[P, units]`` (in place)."""
    cells.ceil_()
    torch.clamp(cells, low, high, out=cells)
    cells.add_(offset)
    if out is None:
        return cells.to(torch.int32).view(-1)
    return out.copy_(cells).view(-1)  # exact: whole numbers below 2**24


def _exact_float32_matmul(device: torch.device) -> bool:
    """Whether a float32 matrix product on ``device`` runs in float32 (whole counts stay exact).

    ``torch.set_float32_matmul_precision("high")`` (which Lightning suggests on GPUs with tensor
    cores) lets CUDA multiply in TF32, and ``"medium"`` lets oneDNN on the CPU multiply in
    bfloat16: their 11- and 8-bit significands would round counts above 2048 and 256. The
    per-backend settings are read, as the global getter raises once both APIs were used.
    """
    if device.type == "cuda":
        precision = torch.backends.cuda.matmul.fp32_precision
    elif device.type == "cpu":
        precision = torch.backends.mkldnn.matmul.fp32_precision  # type: ignore[attr-defined]
    else:
        return True
    return precision in ("ieee", "none")


def _unit_concept_update(
    activations: Tensor,
    masks: Tensor,
    bins: _LevelBins,
    counting: str = "auto",
    out: UnitConceptCounts | None = None,
    labels: tuple[Tensor, Tensor] | None = None,
    rebin: Callable[[slice, Tensor], Tensor] | None = None,
) -> UnitConceptCounts:
    """Count one validated batch; see :func:`unit_concept_update`.

    With ``out`` the batch's counts are added into its tensors in place (no count tensor of the
    full ``[U, L+1, C]`` size is allocated per batch) and ``out`` is returned. ``labels`` are
    the masks' ``_label_combinations`` when the caller already has them. With ``rebin`` the
    counts go into ``out``'s own bins (``out`` is then required and may have fewer levels):
    for each block of units ``rebin(units, counts)`` gets the block's ``[u, L+1]`` pixels per
    bin of ``bins`` and returns, per unit and bin, the bin of ``out`` it is added to.
    """
    batch, units = activations.shape[:2]
    concepts, height, width = masks.shape[1:]
    num_levels = bins.num_levels
    device = activations.device
    if out is None:
        if rebin is not None:
            raise ValueError("Expected `out` with `rebin`: its shape gives the merged bins.")
        out = _empty_counts(units, num_levels, concepts, device)
    scaled = activations.detach().float() * bins.scale.view(1, units, 1, 1)
    if not bool(torch.isfinite(scaled).all()):
        raise ValueError(
            "Expected `activations` within float32 range of the levels' grid, but some overflow."
        )
    num_pixels = batch * height * width
    chunk = max(1, _CHUNK_VALUES // (height * width * UNIT_BLOCK))
    chunks = -(-batch // chunk)
    if concepts == 0:
        by_combination = False
        concept_pixels = torch.zeros(0, dtype=torch.int64, device=device)
    else:
        inverse, combinations = _label_combinations(masks) if labels is None else labels
        # Pixels per concept from pixels per combination: exact, and far cheaper than a column
        # sum of the [N, C] bool matrix.
        combination_pixels = torch.bincount(inverse, minlength=combinations.shape[0])
        concept_pixels = (combinations.long() * combination_pixels[:, None]).sum(dim=0)
        by_combination = _pick_counting(
            counting,
            combinations.shape[0],
            num_levels,
            num_pixels,
            concepts,
            int(concept_pixels.sum()),
            chunks,
        )
    compiled = _counting.available(device)
    if by_combination:
        pixel_term = inverse.to(torch.int32)
        # Combinations → concepts, plus a column of ones (all pixels). Sums of at most
        # `num_pixels` ones: exact in float32 below 2**24 pixels, else float64.
        float32 = num_pixels < 2**24 and _exact_float32_matmul(device)
        exact = torch.float32 if float32 else torch.float64
        expand = torch.cat([combinations, torch.ones_like(combinations[:, :1])], dim=1).to(exact)
    elif concepts:
        pixels = masks.permute(0, 2, 3, 1).reshape(num_pixels, concepts)
        pair_pixel, pair_concept = pixels.nonzero(as_tuple=True)
        if compiled:  # each pixel's concepts as a run of `pair_concept`, from `starts[p]`
            starts = torch.zeros(num_pixels + 1, dtype=torch.int64)
            torch.cumsum(combinations.sum(dim=1)[inverse], dim=0, out=starts[1:])
            pair_concept = pair_concept.to(torch.int32)
    per_sample = height * width
    # Made here once, not by two threads at once.
    kernel_table = bins.kernel_table if compiled and concepts else bins.table

    def count_block(block: int) -> None:
        start = block * UNIT_BLOCK
        stop = min(units, start + UNIT_BLOCK)
        span = (stop - start) * (num_levels + 1)
        table = kernel_table[start:stop].reshape(-1)
        low, high, offset = bins.low[start:stop], bins.high[start:stop], bins.offset[start:stop]
        groups = combinations.shape[0] if by_combination else concepts
        if compiled:
            # A bin counts at most every pixel of the batch: int32 suffices below 2**31 pixels
            # and makes the kernels' increments ~1.4x faster (half the cache lines).
            count_dtype = torch.int32 if num_pixels < 2**31 else torch.int64
            joint_counts = torch.zeros(groups * span, dtype=count_dtype)
            alone_counts = torch.zeros(span if concepts else table.numel(), dtype=count_dtype)
        else:
            joint = _Bincount(groups * span, stop - start, device)
            # Without concepts, pixels per grid cell; the table maps cells to bins at the end.
            alone = _Bincount(span if concepts else table.numel(), stop - start, device)
        for first in range(0, batch, chunk):
            cells = upsample_unit_block(scaled[first : first + chunk], (height, width), block)
            cells = cells.permute(0, 2, 3, 1).reshape(-1, stop - start)  # a view: channels_last
            lo, hi = first * per_sample, first * per_sample + cells.shape[0]
            if compiled:
                if not concepts:
                    _counting.count_cells(cells, low, high, offset, alone_counts)
                elif by_combination:
                    _counting.count_combinations(
                        cells, low, high, offset, table, pixel_term[lo:hi], span, joint_counts
                    )
                else:
                    a, b = int(starts[lo]), int(starts[hi])
                    _counting.count_pairs(
                        cells, low, high, offset, table, starts[lo : hi + 1] - a,
                        pair_concept[a:b], span, alone_counts, joint_counts,
                    )  # fmt: skip
                continue
            if not concepts:
                _cell_indices(cells, low, high, offset, out=alone.slot(cells.shape[0]))
                continue
            flat = _cell_indices(cells, low, high, offset)
            if by_combination:
                index = joint.slot(cells.shape[0])
                torch.index_select(table, 0, flat, out=index.view(-1))
                index.add_((pixel_term[lo:hi] * span)[:, None])
            else:
                index = alone.slot(cells.shape[0])
                torch.index_select(table, 0, flat, out=index.view(-1))
                a, b = torch.searchsorted(
                    pair_pixel, torch.tensor([lo, hi], device=device)
                ).tolist()
                rows = joint.slot(b - a)
                torch.index_select(index, 0, pair_pixel[a:b] - lo, out=rows)
                rows += (pair_concept[a:b].to(torch.int32) * span)[:, None]
        if not compiled:
            joint_counts, alone_counts = joint.counts(), alone.counts()
        if not concepts:  # pixels per grid cell → pixels per bin
            alone_counts = torch.zeros(span, dtype=torch.int64, device=device).index_add_(
                0, table, alone_counts.long()
            )
        bins_out = num_levels + 1
        if rebin is not None:
            # Per unit, which of `out`'s bins each of this block's bins falls in.
            if by_combination:
                per_bin = joint_counts.view(groups, stop - start, -1).sum(0, dtype=torch.int64)
            else:
                per_bin = alone_counts.view(stop - start, -1).long()
            into = rebin(slice(start, stop), per_bin)
            bins_out = out.unit_bins.shape[1]
            if concepts:
                joint_counts = _merged_bins(joint_counts, groups, into, bins_out)
            if not by_combination:
                alone_counts = _merged_bins(alone_counts, 1, into, bins_out)
            span = (stop - start) * bins_out
        unit_bins = out.unit_bins[start:stop].view(-1)
        if by_combination:
            # One product gives the joint counts and, from the column of ones, the unit's own.
            # Its sums are whole numbers held exactly (see `expand`; an autocast region would
            # multiply in half precision): converted as they are, in one copy of the [span, C]
            # slice (no rounding pass, no second copy to reshape).
            with torch.autocast(device.type, enabled=False):
                expanded = joint_counts.view(groups, span).T.to(expand.dtype) @ expand
            unit_bins += expanded[:, concepts].long()
            out.joint_bins[start:stop] += (
                expanded[:, :concepts].long().reshape(stop - start, bins_out, concepts)
            )
        else:
            unit_bins += alone_counts
            if concepts:
                out.joint_bins[start:stop] += joint_counts.view(
                    concepts, stop - start, bins_out
                ).permute(1, 2, 0)

    blocks = -(-units // UNIT_BLOCK)
    if compiled:  # the blocks, or each block's units, over the threads (see `_counting`)
        _counting.over_blocks(count_block, blocks)
    else:
        for block in range(blocks):
            count_block(block)
    out.concept_pixels.add_(concept_pixels)
    out.num_pixels.add_(num_pixels)
    out.num_samples.add_(batch)
    return out


def unit_concept_levels(
    activations: Tensor,
    size: Sequence[int] | None = None,
    *,
    quantile: float = 0.99,
    num_levels: int = 100,
    min_fraction: float = 1e-3,
    num_dense_levels: int = 256,
    max_values: int = 2**14,
) -> Tensor:
    """Candidate levels of each unit, calibrated on a batch of activations.

    The activations are upsampled to ``size`` (the segmentation size, so the levels describe the
    values that are thresholded). Then, per unit:

    1. the log-spaced candidates are quantiles ``1 - f`` of ``max_values`` evenly spaced pixels
       (:func:`~gan_dissect_callbacks.functional.threshold.candidate_fractions`), interpolated
       at those pixels alone;
    2. the dense candidates are chosen among 2048 levels spread evenly (in value) over the
       band around ``quantile``: *all* pixels are counted above each of them exactly (one
       histogram over each unit's grid cells, mapped to the candidates afterwards, so no
       per-pixel lookup), and for every target of
       :func:`~gan_dissect_callbacks.functional.threshold.dense_fractions` the level with the
       closest fraction is kept. A subsample's order statistics would be too
       noisy this far in the tail; exact counts keep the dense levels evenly spaced in pixel
       fraction, which is what bounds the quantile rule's error;
    3. everything is snapped to each unit's power-of-two grid.

    Args:
        activations: ``[B, U, h, w]`` finite float activations.
        size: ``(H, W)`` to upsample to; ``None`` keeps ``(h, w)``.
        quantile: the quantile rule's target (dense levels are packed around it).
        num_levels: log-spaced candidates per unit.
        min_fraction: smallest fraction of pixels above a log-spaced candidate.
        num_dense_levels: extra candidates around the target; 0 for none.
        max_values: pixels per unit whose quantiles give the log-spaced candidates.

    Returns:
        ``[U, num_levels + num_dense_levels]`` float32 levels, non-decreasing per unit.

    Example:
        >>> import torch
        >>> activations = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> unit_concept_levels(activations, num_levels=3, num_dense_levels=0, quantile=0.5)
        tensor([[ 0.0000, 14.5254, 14.9854]])
    """
    if not isinstance(activations, Tensor) or activations.ndim != 4 or activations.shape[0] == 0:
        shape = (
            list(activations.shape)
            if isinstance(activations, Tensor)
            else type(activations).__name__
        )
        raise ValueError(
            f"Expected argument `activations` of shape [B, U, h, w] with B >= 1, but got {shape}."
        )
    if not activations.is_floating_point() or not bool(torch.isfinite(activations).all()):
        raise ValueError(
            "Expected finite float `activations`, but got NaN/Inf values or a non-float dtype."
        )
    if not isinstance(max_values, int) or isinstance(max_values, bool) or max_values < 1:
        raise ValueError(
            f"Expected argument `max_values` to be an int >= 1, but got {max_values!r}."
        )
    candidates = _level_candidates(
        activations, size, quantile, num_levels, min_fraction, num_dense_levels, max_values
    )
    if candidates.pool is None:
        return candidates.logspaced
    return candidates.levels_of(activations.detach().float())


def _merged_bins(counts: Tensor, groups: int, into: Tensor, bins_out: int) -> Tensor:
    """``[groups, u, L+1]`` counts (flat) summed into ``[groups, u, bins_out]`` by ``into``."""
    units = into.shape[0]
    merged = torch.zeros((groups, units, bins_out), dtype=counts.dtype, device=counts.device)
    source = counts.view(groups, units, -1)
    return merged.scatter_add_(2, into.expand(groups, -1, -1), source).view(-1)


def _calibrated_update(
    activations: Tensor,
    masks: Tensor,
    *,
    quantile: float,
    num_levels: int,
    min_fraction: float,
    num_dense_levels: int,
    max_values: int = 2**14,
    counting: str = "auto",
    out: UnitConceptCounts | None = None,
) -> tuple[Tensor, UnitConceptCounts]:
    """Calibrate levels on a validated batch and count the batch at them, in one counting pass.

    The result is ``levels = unit_concept_levels(activations, masks.shape[2:], ...)`` and
    ``unit_concept_update(activations, masks, levels)`` (added into ``out`` when given), bit for
    bit. Calibrating counts every pixel at the candidates the dense levels are chosen from; here
    that count is joint with the concepts, and since the final levels are candidates themselves
    each final bin is a sum of candidate bins: per block of units, the levels are chosen from
    the block's counts and its bins merged before they are expanded to concepts, so the batch
    is not counted a second time. A block whose final levels are not all candidates (snapping
    the final levels may move a log-spaced one, outside the defaults) is counted again. With
    ``counting="auto"`` the one pass counts by label combinations, and only where a block's
    combinations × candidate bins stay below half the batch's pixels; masks with more
    combinations are counted in two passes, which is then faster.
    """
    candidates = _level_candidates(
        activations, masks.shape[2:], quantile, num_levels, min_fraction, num_dense_levels,
        max_values,
    )  # fmt: skip
    if candidates.pool is None:
        levels = candidates.logspaced
        return levels, _unit_concept_update(
            activations, masks, _level_bins(levels), counting, out=out
        )
    source = activations.detach().float()
    units, concepts = activations.shape[1], masks.shape[1]
    labels = _label_combinations(masks) if concepts else None
    if labels is not None and counting == "auto":
        # A block's counts at the pool take K·(L'+1) bins per unit: zeroing, merging and missed
        # caches cost more than the second pass they save unless they are few beside the pixels
        # (measured: 0.26 of them a win, 1.3 a loss).
        pool_bins = labels[1].shape[0] * (candidates.pool.shape[1] + 1)
        if pool_bins > _ONE_PASS_BINS * candidates.num_pixels or pool_bins * UNIT_BLOCK >= 2**31:
            levels = candidates.levels_of(source)
            counts = _unit_concept_update(
                source, masks, _level_bins(levels), out=out, labels=labels
            )
            return levels, counts
        counting = "combinations"
    total_levels = num_levels + candidates.targets.numel()
    device = activations.device
    if out is None:
        out = _empty_counts(units, total_levels, concepts, device)
    levels = torch.empty((units, total_levels), dtype=torch.float32, device=device)
    recount: list[slice] = []

    def rebin(block: slice, unit_bins: Tensor) -> Tensor:
        of_block = candidates.of_units(block)
        assert of_block.pool is not None
        levels[block] = chosen = of_block.levels(unit_bins)
        # The first candidate equal to each final level: pixels above them are the same.
        index = torch.searchsorted(of_block.pool, chosen)
        position = index.clamp(max=of_block.pool.shape[1] - 1)
        if not torch.equal(of_block.pool.gather(1, position), chosen):
            recount.append(block)  # everything goes to bin 0 for now, and is taken out below
            return torch.zeros_like(unit_bins)
        # Candidate bin j (values in (c[j-1], c[j]]) lies in the final bin of the final levels
        # below c[j], i.e. the number of final levels whose candidate index is below j.
        j = torch.arange(unit_bins.shape[1], device=device).expand(unit_bins.shape[0], -1)
        return torch.searchsorted(index.contiguous(), j.contiguous(), side="left")

    before = out.concept_pixels.clone()
    _unit_concept_update(
        source, masks, _level_bins(candidates.pool), counting, out, labels=labels, rebin=rebin
    )
    for block in recount:
        out.unit_bins[block, 0] -= source.shape[0] * masks.shape[2] * masks.shape[3]
        out.joint_bins[block, 0] -= out.concept_pixels - before
        block_counts = UnitConceptCounts(
            out.unit_bins[block], out.joint_bins[block], *(torch.zeros_like(t) for t in
            (out.concept_pixels, out.num_pixels, out.num_samples)),
        )  # fmt: skip
        _unit_concept_update(source[:, block], masks, _level_bins(levels[block]), counting,
                             block_counts, labels=labels)  # fmt: skip
    return levels, out


@dataclass(frozen=True)
class _Candidates:
    """The candidate levels of a calibration batch, before its dense levels are chosen."""

    logspaced: Tensor  # [U, num_levels], snapped when there are no dense levels
    pool: Tensor | None  # [U, num_levels + 2048] log-spaced and fine levels, snapped: the dense
    # levels are chosen among them
    targets: Tensor  # [T] fractions of pixels above the dense levels
    size: tuple[int, int]  # the upsampled size
    num_pixels: int  # pixels per unit in the batch at that size

    def levels(self, unit_bins: Tensor) -> Tensor:
        """The final levels, given the batch's ``[U, L'+1]`` pixels per bin of ``pool``."""
        assert self.pool is not None
        above = counts_above(unit_bins, dim=1).double() / self.num_pixels
        chosen = self.pool.gather(1, nearest_fraction_index(above, self.targets))
        return snap_levels(torch.cat([self.logspaced, chosen], dim=1).sort(dim=1).values)

    def levels_of(self, activations: Tensor) -> Tensor:
        """The final levels of the calibration batch ``activations``, counted at ``pool``."""
        assert self.pool is not None
        no_concepts = torch.zeros(
            (activations.shape[0], 0, *self.size), dtype=torch.bool, device=activations.device
        )
        return self.levels(
            _unit_concept_update(activations, no_concepts, _level_bins(self.pool)).unit_bins
        )

    def of_units(self, units: slice) -> _Candidates:
        pool = None if self.pool is None else self.pool[units]
        return replace(self, logspaced=self.logspaced[units], pool=pool)


def _level_candidates(
    activations: Tensor,
    size: Sequence[int] | None,
    quantile: float,
    num_levels: int,
    min_fraction: float,
    num_dense_levels: int,
    max_values: int,
) -> _Candidates:
    """Steps 1 and 2 of :func:`unit_concept_levels` up to the exact count (validated inputs)."""
    fractions = candidate_fractions(num_levels, min_fraction)
    targets = dense_fractions(quantile, num_dense_levels)
    batch, _, height, width = activations.shape
    out_size = (height, width) if size is None else (int(size[0]), int(size[1]))
    total = batch * out_size[0] * out_size[1]
    count = min(total, max_values)
    device = activations.device
    picks = torch.linspace(0, total - 1, count, device=device).round().long()
    source = activations.detach().float()
    # Only the picked pixels are interpolated (the same interpolation as the full upsampling,
    # up to the last bit): a fraction of the cost of upsampling the whole calibration batch.
    values = upsample_at(source, out_size, picks)
    widest = torch.zeros(0, dtype=torch.float64)
    if num_dense_levels:
        widest = torch.stack([targets.max() * _FINE_MARGIN, targets.min() / _FINE_MARGIN]).clamp(
            0, 1
        )
    # One sort serves the log-spaced candidates (fractions descend: ascending levels) and the
    # edges of the band the dense candidates are picked from.
    quantiles = quantile_levels(values, 1.0 - torch.cat([fractions, widest]))
    logspaced, edges = quantiles[:, : fractions.numel()], quantiles[:, fractions.numel() :].double()
    if num_dense_levels == 0:
        return _Candidates(snap_levels(logspaced), None, targets, out_size, total)
    spread = torch.linspace(0.0, 1.0, _FINE_LEVELS, dtype=torch.float64, device=device)
    fine = (edges[:, :1] + (edges[:, 1:] - edges[:, :1]) * spread).float()
    pool = snap_levels(torch.cat([logspaced, fine], dim=1).sort(dim=1).values)
    return _Candidates(logspaced, pool, targets, out_size, total)


def unit_concept_update(
    activations: Tensor, masks: Tensor, levels: Tensor, *, counting: Counting = "auto"
) -> UnitConceptCounts:
    """Pixel counts of one batch at the given levels.

    Activations are upsampled to the masks' size (bilinear, pixel centres, edge replication),
    then for every unit, level and concept the pixels with ``activation > level`` (and the
    concept present) are counted.

    Args:
        activations: ``[B, U, h, w]`` finite float activations (compared in float32).
        masks: ``[B, C, H, W]`` bool concept masks (multi-label: a pixel may hold several).
        levels: ``[U, L]`` float32 levels on power-of-two grids, e.g. from
            :func:`unit_concept_levels` or
            :func:`~gan_dissect_callbacks.functional.threshold.snap_levels`.
        counting: ``"combinations"`` (fast for hierarchical masks), ``"pairs"`` (for masks with
            many distinct label combinations) or ``"auto"`` to choose per batch.

    Returns:
        :class:`UnitConceptCounts`; memory ``8·U·(L+1)·(C+1) + 8·C + 16`` bytes whatever ``B``.

    Raises:
        TypeError: for non-tensor inputs or wrong dtypes.
        ValueError: for wrong shapes, an empty batch, NaN/Inf activations or unusable levels.

    Example:
        >>> import torch
        >>> activations = torch.tensor([[[[0.0, 1.0]]]])
        >>> masks = torch.tensor([[[[False, False, True, True]]]])
        >>> counts = unit_concept_update(activations, masks, torch.tensor([[0.5]]))
        >>> counts.unit_bins, counts.joint_bins[..., 0]
        (tensor([[2, 2]]), tensor([[0, 2]]))
    """
    _check_inputs(activations, masks)
    if (
        not isinstance(levels, Tensor)
        or levels.ndim != 2
        or levels.shape[0] != activations.shape[1]
    ):
        shape = list(levels.shape) if isinstance(levels, Tensor) else type(levels).__name__
        raise ValueError(
            f"Expected argument `levels` of shape [{activations.shape[1]}, L] (one row per unit), "
            f"but got {shape}."
        )
    return _unit_concept_update(
        activations, masks, _level_bins(levels.to(activations.device)), counting
    )


def unit_concept_compute(
    counts: UnitConceptCounts,
    levels: Tensor,
    *,
    quantile: float = 0.99,
    min_concept_fraction: float = 1e-4,
) -> UnitConceptIoUResult:
    """IoU under the quantile and IQR threshold rules from accumulated counts.

    Args:
        counts: counts of all streamed data, at ``levels``.
        levels: ``[U, L]`` the levels the counts were taken at.
        quantile: the quantile rule's target, in (0, 1).
        min_concept_fraction: concepts covering a smaller fraction of all pixels are ignored.

    Returns:
        :class:`UnitConceptIoUResult`.

    Raises:
        ValueError: if nothing was counted, or arguments are out of range.
    """
    if not isinstance(quantile, float) or not 0 < quantile < 1:
        raise ValueError(
            f"Expected argument `quantile` to be a float in (0, 1), but got {quantile!r}."
        )
    if not isinstance(min_concept_fraction, (int, float)) or not 0 <= min_concept_fraction <= 1:
        raise ValueError(
            "Expected argument `min_concept_fraction` to be a float in [0, 1], "
            f"but got {min_concept_fraction!r}."
        )
    total = int(counts.num_pixels)
    if total == 0:
        raise ValueError(
            "Expected at least one counted sample, but got zero samples; call update() first."
        )
    units, bins, concepts = counts.joint_bins.shape
    if tuple(levels.shape) != (units, bins - 1):
        raise ValueError(
            f"Expected `levels` of shape [{units}, {bins - 1}], but got {list(levels.shape)}."
        )
    concept_fraction = counts.concept_pixels.double() / total
    present = concept_fraction >= min_concept_fraction
    step = max(1, _COMPUTE_TABLES // (bins * max(1, concepts)))
    starts = range(0, units, step)  # blocks of units bound the float64 temporaries
    parts: list[tuple[Tensor, ...]] = [()] * len(starts)

    def score_block(b: int) -> None:
        start = starts[b]
        unit_above = counts_above(counts.unit_bins[start : start + step], dim=1)
        joint_above = counts_above(counts.joint_bins[start : start + step], dim=1)
        block = unit_above.shape[0]

        index = quantile_rule(unit_above, total, quantile)
        mask_pixels = unit_above.gather(1, index[:, None])
        joint = joint_above.gather(1, index[:, None, None].expand(block, 1, concepts)).squeeze(1)
        iou_quantile = iou_from_counts(joint, mask_pixels, counts.concept_pixels) * present

        pair_index, iqr = iqr_rule(joint_above, unit_above, counts.concept_pixels, total)
        pair_joint = joint_above.gather(1, pair_index[:, None, :]).squeeze(1)
        pair_pixels = unit_above.gather(1, pair_index)
        iou_iqr = iou_from_counts(pair_joint, pair_pixels, counts.concept_pixels) * present
        parts[b] = (index, mask_pixels[:, 0], iou_quantile, pair_index, iqr * present, iou_iqr)

    if _counting.available(counts.joint_bins.device):
        _counting.over_blocks(score_block, len(starts))  # as the counting loop (see there)
    else:
        for b in range(len(starts)):
            score_block(b)
    index, mask_pixels, iou_quantile, pair_index, iqr, iou_iqr = (
        torch.cat(p) for p in zip(*parts, strict=True)
    )
    return UnitConceptIoUResult(
        levels=levels,
        threshold_quantile=levels.gather(1, index[:, None]).squeeze(1),
        fraction_above=mask_pixels.double() / total,
        iou_quantile=iou_quantile,
        threshold_iqr=levels.gather(1, pair_index),
        iqr=iqr,
        iou_iqr=iou_iqr,
        concept_fraction=concept_fraction,
        concept_present=present,
        num_samples=int(counts.num_samples),
        num_pixels=total,
        quantile=quantile,
    )


def unit_concept_iou(
    activations: Tensor,
    masks: Tensor,
    *,
    quantile: float = 0.99,
    num_levels: int = 100,
    min_fraction: float = 1e-3,
    num_dense_levels: int = 256,
    min_concept_fraction: float = 1e-4,
    levels: Tensor | None = None,
) -> UnitConceptIoUResult:
    """Dissect activations and masks held in memory: levels, counts and scores in one call.

    Args:
        activations: ``[B, U, h, w]`` finite float activations.
        masks: ``[B, C, H, W]`` bool concept masks.
        quantile: the quantile rule's target.
        num_levels: log-spaced candidate levels per unit.
        min_fraction: smallest fraction of pixels above a log-spaced candidate.
        num_dense_levels: extra candidates around the target.
        min_concept_fraction: concepts below this fraction of pixels are ignored.
        levels: ``[U, L]`` levels to use instead of calibrating on ``activations``.

    Returns:
        :class:`UnitConceptIoUResult`.
    """
    _check_inputs(activations, masks)
    if levels is None:
        levels, counts = _calibrated_update(
            activations,
            masks,
            quantile=quantile,
            num_levels=num_levels,
            min_fraction=min_fraction,
            num_dense_levels=num_dense_levels,
        )
    else:
        counts = unit_concept_update(activations, masks, levels)
    return unit_concept_compute(
        counts, levels, quantile=quantile, min_concept_fraction=min_concept_fraction
    )
