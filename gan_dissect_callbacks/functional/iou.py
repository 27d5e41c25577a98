"""Intersection over union from pixel counts.

Dissection scores a unit ``u`` against a concept ``c`` by

``IoU_{u,c} = E_z|mask_u ∧ s_c(x)| / E_z|mask_u ∨ s_c(x)|``

with the counts summed over all sampled images *before* dividing: a ratio of sums, never a
mean of per-image ratios. Everything here therefore takes pixel counts, which callers
accumulate however they like (streaming, across processes) and divide once at the end.

Example:
    >>> import torch
    >>> intersection = torch.tensor([3, 0, 0])
    >>> iou_from_counts(intersection, torch.tensor([4, 0, 2]), torch.tensor([5, 0, 0]))
    tensor([0.5000, 0.0000, 0.0000], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["iou_from_counts"]


def iou_from_counts(intersection: Tensor, mask_count: Tensor, concept_count: Tensor) -> Tensor:
    """IoU of a thresholded unit mask and a concept mask from their pixel counts.

    ``union = mask_count + concept_count - intersection``; an empty union (both masks empty)
    gives IoU 0 rather than NaN, so a concept that never occurs can never be a unit's best
    match. Arguments broadcast against each other.

    Args:
        intersection: pixels in both the unit mask and the concept mask.
        mask_count: pixels in the unit mask (activation above the threshold).
        concept_count: pixels in the concept mask.

    Returns:
        A float64 tensor of IoUs in ``[0, 1]`` with the broadcast shape.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if the shapes do not broadcast, a count is negative, or the intersection
            exceeds one of the two mask counts.

    Example:
        >>> import torch
        >>> inter = torch.tensor([[1, 2], [0, 4]])
        >>> iou_from_counts(inter, torch.tensor([[2], [4]]), torch.tensor([2, 4]))
        tensor([[0.3333, 0.5000],
                [0.0000, 1.0000]], dtype=torch.float64)
    """
    named = {"intersection": intersection, "mask_count": mask_count, "concept_count": concept_count}
    for name, value in named.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"Expected argument `{name}` to be a tensor, but got {type(value).__name__}."
            )
    try:
        inter, mask, concept = torch.broadcast_tensors(intersection, mask_count, concept_count)
    except RuntimeError:
        shapes = ", ".join(f"`{n}` {list(v.shape)}" for n, v in named.items())
        raise ValueError(
            f"Expected count tensors with broadcastable shapes, but got {shapes}."
        ) from None
    inter, mask, concept = inter.double(), mask.double(), concept.double()
    for name, value in (("intersection", inter), ("mask_count", mask), ("concept_count", concept)):
        if bool((value < 0).any()):
            raise ValueError(
                f"Expected argument `{name}` to hold non-negative counts, "
                f"but got {value.min().item()}."
            )
    if bool((inter > torch.minimum(mask, concept)).any()):
        raise ValueError(
            "Expected argument `intersection` to be at most `mask_count` and `concept_count`, "
            "but it is larger for some entries."
        )
    union = mask + concept - inter
    safe = torch.where(union > 0, union, torch.ones_like(union))
    return torch.where(union > 0, inter / safe, torch.zeros_like(union))
