"""Entropies and the information quality ratio of 2×2 contingency tables.

The paper's threshold rule picks, for each unit and concept, the activation level ``t`` that
maximises the *information quality ratio*

``IQR = I(mask_u; s_c) / H(mask_u, s_c)``,   with ``I(X;Y) = H(X) + H(Y) - H(X,Y)``,

computed from the 2×2 table of pixel counts of (unit mask on/off) × (concept present/absent).
IQR is 1 when one mask determines the other and 0 when they are independent.

Tables are laid out as ``table[..., x, y]`` with ``x`` the unit mask (0 off, 1 on) and ``y`` the
concept (0 absent, 1 present); every function is vectorised over any leading shape. Counts are
normalised per table, ``0·log 0 = 0``, entropies are in nats (the ratio has no unit), and an
empty table has zero entropy.

Example:
    >>> import torch
    >>> perfect = torch.tensor([[6, 0], [0, 2]])
    >>> independent = torch.tensor([[3, 3], [1, 1]])
    >>> information_quality_ratio(torch.stack([perfect, independent]))
    tensor([1., 0.], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "contingency_table",
    "entropy",
    "information_quality_ratio",
    "information_quality_ratio_from_counts",
    "joint_entropy",
    "mutual_information",
]


def _as_counts(name: str, counts: Tensor) -> Tensor:
    if not isinstance(counts, Tensor):
        raise TypeError(
            f"Expected argument `{name}` to be a tensor, but got {type(counts).__name__}."
        )
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(
            f"Expected argument `{name}` to hold integer or float counts, but got {counts.dtype}."
        )
    counts = counts.double()
    if counts.numel() and bool((counts < 0).any()):
        raise ValueError(
            f"Expected argument `{name}` to hold non-negative counts, "
            f"but got {counts.min().item()}."
        )
    return counts


def _check_table(table: Tensor) -> Tensor:
    table = _as_counts("table", table)
    if table.ndim < 2 or tuple(table.shape[-2:]) != (2, 2):
        raise ValueError(
            f"Expected argument `table` of shape [..., 2, 2], but got {list(table.shape)}."
        )
    return table


def _entropy_of(counts: Tensor, dims: tuple[int, ...]) -> Tensor:
    total = counts.sum(dim=dims, keepdim=True)
    p = counts / torch.where(total > 0, total, torch.ones_like(total))
    return 0.0 - torch.xlogy(p, p).sum(dim=dims)  # 0.0 - x turns -0.0 into 0.0


def contingency_table(
    joint: Tensor, mask_count: Tensor, concept_count: Tensor, total: Tensor
) -> Tensor:
    """The 2×2 table of a unit mask against a concept mask from marginal pixel counts.

    Args:
        joint: pixels where the unit mask is on and the concept present.
        mask_count: pixels where the unit mask is on.
        concept_count: pixels where the concept is present.
        total: all pixels. The four arguments broadcast against each other.

    Returns:
        A float64 tensor ``[..., 2, 2]`` indexed ``[mask on, concept present]``.

    Raises:
        ValueError: if the counts are inconsistent (a cell would be negative).

    Example:
        >>> import torch
        >>> contingency_table(torch.tensor(2), torch.tensor(3), torch.tensor(4), torch.tensor(10))
        tensor([[5., 2.],
                [1., 2.]], dtype=torch.float64)
    """
    named = {
        "joint": joint,
        "mask_count": mask_count,
        "concept_count": concept_count,
        "total": total,
    }
    j, m, c, n = (_as_counts(name, value) for name, value in named.items())
    j, m, c, n = torch.broadcast_tensors(j, m, c, n)
    off_absent = n - m - c + j
    table = torch.stack([torch.stack([off_absent, c - j], -1), torch.stack([m - j, j], -1)], -2)
    if table.numel() and bool((table < 0).any()):
        raise ValueError(
            "Expected consistent counts (joint <= mask_count, concept_count and "
            "mask_count + concept_count - joint <= total), but a table cell would be negative."
        )
    return table


def entropy(counts: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of the distribution proportional to ``counts`` along ``dim``.

    Example:
        >>> import torch
        >>> entropy(torch.tensor([[1, 1], [4, 0], [0, 0]]))
        tensor([0.6931, 0.0000, 0.0000], dtype=torch.float64)
    """
    return _entropy_of(_as_counts("counts", counts), (dim,))


def joint_entropy(table: Tensor) -> Tensor:
    """``H(X, Y)`` of 2×2 tables ``[..., 2, 2]``, in nats.

    Example:
        >>> import torch
        >>> joint_entropy(torch.tensor([[1, 1], [1, 1]]))
        tensor(1.3863, dtype=torch.float64)
    """
    return _entropy_of(_check_table(table), (-2, -1))


def mutual_information(table: Tensor) -> Tensor:
    """``I(X; Y) = H(X) + H(Y) - H(X, Y)`` of 2×2 tables, in nats, never below 0.

    Rounding can leave ``-1e-17`` for independent tables; the result is clamped at 0.

    Example:
        >>> import torch
        >>> mutual_information(torch.tensor([[[5, 0], [0, 5]], [[2, 2], [2, 2]]]))
        tensor([0.6931, 0.0000], dtype=torch.float64)
    """
    table = _check_table(table)
    h_x = _entropy_of(table.sum(-1), (-1,))
    h_y = _entropy_of(table.sum(-2), (-1,))
    return (h_x + h_y - _entropy_of(table, (-2, -1))).clamp_min(0)


def information_quality_ratio(table: Tensor) -> Tensor:
    """``I(X; Y) / H(X, Y)`` of 2×2 tables, in ``[0, 1]``; 0 where ``H(X, Y) = 0``.

    A table with a single non-empty cell (both masks constant) carries no information and gets
    0, so it never wins a threshold search.

    Example:
        >>> import torch
        >>> information_quality_ratio(torch.tensor([[90, 2], [3, 5]]))
        tensor(0.2438, dtype=torch.float64)
    """
    table = _check_table(table)
    return _iqr(
        table[..., 1, 1], table[..., 1, :].sum(-1), table[..., :, 1].sum(-1), table.sum((-2, -1))
    )


def information_quality_ratio_from_counts(
    joint: Tensor, mask_count: Tensor, concept_count: Tensor, total: Tensor
) -> Tensor:
    """:func:`information_quality_ratio` of the table :func:`contingency_table` would build.

    Computes the marginal entropies once per broadcast operand (e.g. once per concept rather
    than once per unit × level × concept), so it is the fast path for threshold searches.

    Example:
        >>> import torch
        >>> joint, mask = torch.tensor([[5], [4], [1]]), torch.tensor([[9], [5], [1]])
        >>> information_quality_ratio_from_counts(joint, mask, torch.tensor([5]), torch.tensor(10))
        tensor([[0.0794],
                [0.1615],
                [0.0794]], dtype=torch.float64)
    """
    named = {
        "joint": joint,
        "mask_count": mask_count,
        "concept_count": concept_count,
        "total": total,
    }
    j, m, c, n = (_as_counts(name, value) for name, value in named.items())
    low = torch.minimum(m, c) - j
    if low.numel() and bool((low < 0).any() | ((n - m - c + j) < 0).any()):
        raise ValueError(
            "Expected consistent counts (joint <= mask_count, concept_count and "
            "mask_count + concept_count - joint <= total), but a table cell would be negative."
        )
    return _iqr(j, m, c, n)


def _iqr(joint: Tensor, mask: Tensor, concept: Tensor, total: Tensor) -> Tensor:
    safe_total = torch.where(total > 0, total, torch.ones_like(total))

    def plogp(count: Tensor) -> Tensor:
        p = count / safe_total
        return torch.xlogy(p, p)

    h_x = 0.0 - (plogp(mask) + plogp(total - mask))
    h_y = 0.0 - (plogp(concept) + plogp(total - concept))
    h_xy = 0.0 - (
        plogp(joint)
        + plogp(mask - joint)
        + plogp(concept - joint)
        + plogp(total - mask - concept + joint)
    )
    mutual = (h_x + h_y - h_xy).clamp_min(0)
    ratio = mutual / torch.where(h_xy > 0, h_xy, torch.ones_like(h_xy))
    return torch.where(h_xy > 0, ratio, torch.zeros_like(ratio)).clamp(0, 1)
