"""Candidate threshold levels and the two threshold rules of dissection.

Both rules choose, per unit, among *candidate levels* taken from the unit's own activations
(never a fixed absolute grid), and both are evaluated from tables of pixel counts above each
level, so one streaming pass over the data serves both:

- **quantile** (2020 code, NetDissect): ``t_u`` is the candidate whose fraction of pixels above
  it, over all streamed pixels, is closest to ``1 - quantile`` (top 1% by default);
- **IQR** (the paper): for every unit and concept, the candidate that maximises the
  information quality ratio ``I(mask_u; s_c) / H(mask_u, s_c)``.

Candidates (chosen by :func:`~gan_dissect_callbacks.functional.unit_concept.unit_concept_levels`)
are the unit's quantiles ``1 - f`` for ``f`` log-spaced in ``[min_fraction, 1]``
(:func:`candidate_fractions`, 100 as in the paper) plus dense candidates whose fractions of pixels
above are log-spaced around the quantile rule's target ``f_0 = 1 - quantile``
(:func:`dense_fractions`: ``f_0/3 … 3·f_0``, ~0.9% apart by default), so the top-quantile threshold
lands within a fraction of a percent of the exact quantile's pixel count.

Levels are snapped onto a per-unit power-of-two grid (:func:`snap_levels`); that lets the
streaming counter bin activations with exact arithmetic instead of a binary search.

Example:
    >>> import torch
    >>> bins = torch.tensor([[90, 5, 3, 2]])  # pixels per bin of 3 levels (bin 0: below all)
    >>> above = counts_above(bins)
    >>> above, quantile_rule(above, 100, 0.95)
    (tensor([[10,  5,  2]]), tensor([1]))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_fraction, check_int
from gan_dissect_callbacks.functional import _counting
from gan_dissect_callbacks.functional.iqr import information_quality_ratio_from_counts
from gan_dissect_callbacks.functional.sorting import sort_rows

__all__ = [
    "DEFAULT_GRID_CELLS",
    "DENSE_SPAN",
    "candidate_fractions",
    "counts_above",
    "dense_fractions",
    "iqr_rule",
    "nearest_fraction_index",
    "quantile_levels",
    "quantile_rule",
    "snap_levels",
]

#: Default number of grid cells spanning a unit's candidate levels (see :func:`snap_levels`).
DEFAULT_GRID_CELLS = 2**14

#: Dense candidates cover fractions of pixels above from ``(1 - quantile) / DENSE_SPAN`` to
#: ``DENSE_SPAN · (1 - quantile)``.
DENSE_SPAN = 3.0

# Grid indices stay below 2**22 so integer arithmetic on them in float32 is exact.
_MAX_GRID_INDEX_BITS = 22


def candidate_fractions(num_levels: int = 100, min_fraction: float = 1e-3) -> Tensor:
    """Fractions of pixels above the log-spaced candidates: log-spaced in ``[min_fraction, 1]``.

    The candidate for ``f`` is the unit's quantile ``1 - f`` (``f = 1``: its minimum).

    Example:
        >>> candidate_fractions(4, 1e-3)
        tensor([1.0000, 0.1000, 0.0100, 0.0010], dtype=torch.float64)
    """
    num_levels = check_int(num_levels, "num_levels")
    min_fraction = check_fraction(min_fraction, "min_fraction")
    if num_levels == 1:
        return torch.tensor([min_fraction], dtype=torch.float64)
    return torch.logspace(0.0, math.log10(min_fraction), num_levels, dtype=torch.float64)


def dense_fractions(
    quantile: float = 0.99, num_dense_levels: int = 256, span: float = DENSE_SPAN
) -> Tensor:
    """Target fractions of the dense candidates: log-spaced in ``[f_0 / span, f_0 · span]``.

    ``f_0 = 1 - quantile`` is the quantile rule's target; fractions are clipped to ``[0, 1]``.

    Example:
        >>> dense_fractions(0.9, 3, span=2.0)
        tensor([0.2000, 0.1000, 0.0500], dtype=torch.float64)
    """
    quantile = check_fraction(quantile, "quantile")
    num_dense_levels = check_int(num_dense_levels, "num_dense_levels", minimum=0)
    if not isinstance(span, (int, float)) or isinstance(span, bool) or span < 1:
        raise ValueError(f"Expected argument `span` to be a float >= 1, but got {span!r}.")
    target = 1.0 - quantile
    if num_dense_levels == 1:
        return torch.tensor([target], dtype=torch.float64)
    scale = math.log10(span)
    return (target * torch.logspace(scale, -scale, num_dense_levels, dtype=torch.float64)).clamp(
        0.0, 1.0
    )


def quantile_levels(values: Tensor, quantiles: Tensor) -> Tensor:
    """Per-row quantiles with linear interpolation (the ``torch.quantile`` default).

    Unlike ``torch.quantile`` this has no input size limit and sorts each row once for all
    requested quantiles, with :func:`~gan_dissect_callbacks.functional.sorting.sort_rows` (on
    the CPU NumPy's vectorised sort: the same values as ``torch.sort``, about 3× faster).

    Args:
        values: ``[U, N]`` float tensor, one row per unit, ``N >= 1``.
        quantiles: ``[L]`` positions in ``[0, 1]``.

    Returns:
        ``[U, L]`` float tensor (the dtype of ``values``), non-decreasing along each row when
        ``quantiles`` is sorted.

    Example:
        >>> import torch
        >>> quantile_levels(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), torch.tensor([0.0, 0.5, 1.0]))
        tensor([[1.0000, 2.5000, 4.0000]])
    """
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[1] < 1:
        shape = list(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"Expected argument `values` of shape [U, N] with N >= 1, but got {shape}."
        )
    if not values.is_floating_point():
        raise TypeError(f"Expected argument `values` to be a float tensor, but got {values.dtype}.")
    if not isinstance(quantiles, Tensor) or quantiles.ndim != 1:
        raise ValueError("Expected argument `quantiles` to be a 1-D tensor of positions in [0, 1].")
    q = quantiles.to(device=values.device, dtype=torch.float64)
    if q.numel() and bool(((q < 0) | (q > 1) | q.isnan()).any()):
        raise ValueError(f"Expected argument `quantiles` in [0, 1], but got {quantiles.tolist()}.")
    position = q * (values.shape[1] - 1)
    below = position.floor().long()
    above = position.ceil().long()
    weight = position - below
    out = torch.empty((values.shape[0], q.numel()), dtype=values.dtype, device=values.device)
    rows = max(1, 2**20 // values.shape[1])  # sort a block of rows at a time: bounded memory
    for start in range(0, values.shape[0], rows):
        ordered = sort_rows(values[start : start + rows])
        low, high = ordered[:, below].double(), ordered[:, above].double()
        out[start : start + rows] = torch.lerp(low, high, weight.expand_as(low))
    return out


def snap_levels(levels: Tensor, num_cells: int = DEFAULT_GRID_CELLS) -> Tensor:
    """Round each unit's levels to multiples of a power of two ``2^e_u``.

    ``2^e_u`` is the smallest power of two with ``(max_l - min_l) / 2^e_u <= num_cells`` and
    ``max_l |level| / 2^e_u <= 2^22``. Each level moves by at most half a step, i.e. by less
    than ``(max_l - min_l) / num_cells`` (or than 2^-22 of the largest ``|level|`` when that
    bound sets the step). On such a grid the streaming counter decides ``activation > level``
    with exact arithmetic (power-of-two scaling and ``ceil``) and a lookup table, much faster
    than a binary search; the decision is bit-for-bit the one ``activation > level`` gives.

    Args:
        levels: ``[U, L]`` float32 levels, finite, non-decreasing along each row.
        num_cells: grid resolution over each unit's level range, in ``[1, 2**16]``.

    Returns:
        ``[U, L]`` float32 snapped levels (still non-decreasing; close levels may coincide).

    Example:
        >>> import torch
        >>> snap_levels(torch.tensor([[0.0, 0.3, 1.0]]), num_cells=4)
        tensor([[0.0000, 0.2500, 1.0000]])
    """
    _check_levels(levels)
    if not isinstance(num_cells, int) or isinstance(num_cells, bool) or not 1 <= num_cells <= 2**16:
        raise ValueError(
            f"Expected argument `num_cells` to be an int in [1, 65536], but got {num_cells!r}."
        )
    wide = levels.double()
    low, high = wide.min(dim=-1, keepdim=True).values, wide.max(dim=-1, keepdim=True).values
    magnitude = torch.maximum(low.abs(), high.abs())
    needed = torch.maximum((high - low) / num_cells, magnitude * 2.0**-_MAX_GRID_INDEX_BITS)
    exponent = torch.where(needed > 0, torch.ceil(torch.log2(needed)), torch.zeros_like(needed))
    step = torch.ldexp(torch.ones_like(needed), exponent.clamp(-126, 127).long())
    return (torch.round(wide / step) * step).to(torch.float32)


def _check_levels(levels: Tensor) -> None:
    if not isinstance(levels, Tensor):
        raise TypeError(
            f"Expected argument `levels` to be a tensor, but got {type(levels).__name__}."
        )
    if levels.ndim != 2 or levels.shape[1] < 1:
        raise ValueError(
            f"Expected argument `levels` of shape [U, L] with L >= 1, but got {list(levels.shape)}."
        )
    if not levels.is_floating_point():
        raise TypeError(f"Expected argument `levels` to be a float tensor, but got {levels.dtype}.")
    if not bool(torch.isfinite(levels).all()):
        raise ValueError("Expected argument `levels` to be finite, but it holds NaN or Inf.")
    if levels.shape[1] > 1 and bool((levels[:, 1:] < levels[:, :-1]).any()):
        raise ValueError("Expected argument `levels` to be sorted ascending along each unit's row.")


def counts_above(bin_counts: Tensor, dim: int = 1) -> Tensor:
    """Turn per-bin counts into counts strictly above each level.

    Bin ``b`` holds values ``v`` with ``level[b-1] < v <= level[b]`` (bin 0: ``v <= level[0]``,
    bin ``L``: ``v > level[L-1]``), so the count above level ``l`` is the sum of bins ``> l``.

    Args:
        bin_counts: counts with ``L + 1`` bins along ``dim``.
        dim: the bin dimension.

    Returns:
        Counts with ``L`` levels along ``dim``.

    Example:
        >>> import torch
        >>> counts_above(torch.tensor([[5, 1, 0, 2]]))
        tensor([[3, 2, 2]])
    """
    if not isinstance(bin_counts, Tensor) or bin_counts.ndim == 0 or bin_counts.shape[dim] < 2:
        raise ValueError("Expected argument `bin_counts` with at least 2 bins along `dim`.")
    reverse = torch.flip(torch.cumsum(torch.flip(bin_counts, [dim]), dim), [dim])
    return reverse.narrow(dim, 1, bin_counts.shape[dim] - 1)


def nearest_fraction_index(fraction_above: Tensor, targets: Tensor) -> Tensor:
    """For each row and target, the index of the level whose fraction above is closest.

    Rows must be non-increasing, as fractions above sorted levels are; ties go to the lowest
    index. Costs ``O(U·T·log L)`` time and no ``[U, L, T]`` intermediate.

    Args:
        fraction_above: ``[U, L]`` fraction of pixels above each (sorted) level.
        targets: ``[T]`` target fractions.

    Returns:
        ``[U, T]`` int64 level indices.

    Example:
        >>> import torch
        >>> nearest_fraction_index(torch.tensor([[0.5, 0.2, 0.1, 0.0]]), torch.tensor([0.3, 0.12]))
        tensor([[1, 2]])
    """
    if fraction_above.ndim != 2 or fraction_above.shape[1] < 1:
        raise ValueError(
            f"Expected `fraction_above` of shape [U, L], but got {list(fraction_above.shape)}."
        )
    rising = -fraction_above.double().contiguous()
    if fraction_above.shape[1] > 1 and bool((rising[:, 1:] < rising[:, :-1]).any()):
        raise ValueError("Expected `fraction_above` to be non-increasing along each row.")
    wanted = -targets.double().to(rising.device).expand(rising.shape[0], -1).contiguous()
    last = rising.shape[1] - 1
    after = torch.searchsorted(rising, wanted).clamp(
        max=last
    )  # first level with fraction <= target
    before = (after - 1).clamp(min=0)
    gap_after = (rising.gather(1, after) - wanted).abs()
    gap_before = (rising.gather(1, before) - wanted).abs()
    # The closer side; on a tie, or for the level before, the first level with the same fraction.
    closer = torch.where(gap_before <= gap_after, before, after)
    return torch.searchsorted(rising, rising.gather(1, closer))


def quantile_rule(unit_above: Tensor, num_pixels: int | Tensor, quantile: float) -> Tensor:
    """Index of the level whose fraction of pixels above it is closest to ``1 - quantile``.

    Ties go to the lowest index.

    Args:
        unit_above: ``[U, L]`` pixels above each level.
        num_pixels: all pixels counted.
        quantile: the target quantile, e.g. 0.99 for the top 1%.

    Returns:
        ``[U]`` int64 level indices.

    Example:
        >>> import torch
        >>> quantile_rule(torch.tensor([[100, 30, 12, 8, 0]]), 1000, 0.99)
        tensor([2])
    """
    quantile = check_fraction(quantile, "quantile")
    total = float(num_pixels)
    if total <= 0:
        raise ValueError(f"Expected argument `num_pixels` to be positive, but got {num_pixels}.")
    target = torch.tensor([1.0 - quantile], dtype=torch.float64)
    return nearest_fraction_index(unit_above.double() / total, target)[:, 0]


def iqr_rule(
    joint_above: Tensor,
    unit_above: Tensor,
    concept_counts: Tensor,
    num_pixels: int | Tensor,
    *,
    max_tables: int = 2**20,
) -> tuple[Tensor, Tensor]:
    """For each unit and concept, the level that maximises the information quality ratio.

    Ties go to the lowest level.

    Args:
        joint_above: ``[U, L, C]`` pixels above each level where the concept is present.
        unit_above: ``[U, L]`` pixels above each level.
        concept_counts: ``[C]`` pixels where each concept is present.
        num_pixels: all pixels counted.
        max_tables: work on blocks of units of at most this many 2×2 tables (memory bound).

    Returns:
        ``(index, iqr)``: ``[U, C]`` int64 level indices and ``[U, C]`` float64 maximal IQRs.

    Example:
        >>> import torch
        >>> joint = torch.tensor([[[4], [4], [1]]])
        >>> index, iqr = iqr_rule(joint, torch.tensor([[9, 4, 1]]), torch.tensor([4]), 10)
        >>> index, iqr
        (tensor([[1]]), tensor([[1.]], dtype=torch.float64))
    """
    if joint_above.ndim != 3 or tuple(unit_above.shape) != tuple(joint_above.shape[:2]):
        raise ValueError(
            "Expected `joint_above` [U, L, C] and `unit_above` [U, L], "
            f"but got {list(joint_above.shape)} and {list(unit_above.shape)}."
        )
    if concept_counts.shape != joint_above.shape[2:]:
        raise ValueError(
            f"Expected `concept_counts` of shape [{joint_above.shape[2]}], "
            f"but got {list(concept_counts.shape)}."
        )
    units, levels, concepts = joint_above.shape
    if _counting.available(joint_above.device):
        return _counting.best_iqr(
            joint_above.long(), unit_above.long(), concept_counts.long(), int(num_pixels)
        )
    total = torch.as_tensor(num_pixels, dtype=torch.float64, device=joint_above.device)
    step = max(1, max_tables // max(1, levels * concepts))
    indices, ratios = [], []
    for start in range(0, units, step):
        joint = joint_above[start : start + step]
        mask = unit_above[start : start + step, :, None]
        ratio = information_quality_ratio_from_counts(joint, mask, concept_counts, total)
        index = ratio.argmax(dim=1)  # the first (lowest) level among equal ratios
        best = ratio.gather(1, index[:, None]).squeeze(1)
        indices.append(index)
        ratios.append(best)
    if not indices:
        empty = torch.zeros((0, concepts), device=joint_above.device)
        return empty.long(), empty.double()
    return torch.cat(indices), torch.cat(ratios)
