"""Brute-force references for the dissection tests: everything in memory, no cleverness."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gan_dissect_callbacks.functional.upsample import upsample_activations


def upsampled_values(activations: Tensor, size: tuple[int, int]) -> Tensor:
    """``[U, N]`` all upsampled activations, pixels ordered (sample, row, column)."""
    up = upsample_activations(activations.float(), size)
    return up.permute(1, 0, 2, 3).reshape(up.shape[1], -1)


def mask_pixels(masks: Tensor) -> Tensor:
    """``[C, N]`` bool, same pixel order as :func:`upsampled_values`."""
    return masks.permute(1, 0, 2, 3).reshape(masks.shape[1], -1)


def brute_force_counts(activations: Tensor, masks: Tensor, levels: Tensor) -> dict[str, Tensor]:
    """Counts above each level by comparing every pixel with every level."""
    values = upsampled_values(activations, (masks.shape[2], masks.shape[3]))
    pixels = mask_pixels(masks)
    above = values[:, None, :] > levels[:, :, None]  # [U, L, N]
    unit_above = above.sum(-1)
    joint_above = torch.einsum("uln,cn->ulc", above.double(), pixels.double()).round().long()
    return {
        "unit_above": unit_above,
        "joint_above": joint_above,
        "concept_pixels": pixels.sum(-1),
        "num_pixels": torch.tensor(values.shape[1]),
    }


def reference_iou(joint: Tensor, mask: Tensor, concept: Tensor) -> Tensor:
    joint, mask, concept = (x.double() for x in torch.broadcast_tensors(joint, mask, concept))
    union = mask + concept - joint
    out = torch.zeros_like(union)
    nonzero = union > 0
    out[nonzero] = joint[nonzero] / union[nonzero]
    return out


def reference_iqr(joint: float, mask: float, concept: float, total: float) -> float:
    """IQR of one 2×2 table with plain Python floats."""
    cells = [total - mask - concept + joint, concept - joint, mask - joint, joint]
    rows = [cells[0] + cells[1], cells[2] + cells[3]]
    cols = [cells[0] + cells[2], cells[1] + cells[3]]

    def h(counts: list[float]) -> float:
        return -sum(c / total * math.log(c / total) for c in counts if c > 0)

    h_xy = h(cells)
    if h_xy == 0:
        return 0.0
    return max(0.0, h(rows) + h(cols) - h_xy) / h_xy


def reference_iqr_table(
    joint_above: Tensor, unit_above: Tensor, concepts: Tensor, total: int
) -> np.ndarray:
    units, levels, num_concepts = joint_above.shape
    out = np.zeros((units, levels, num_concepts))
    for u in range(units):
        for lvl in range(levels):
            for c in range(num_concepts):
                out[u, lvl, c] = reference_iqr(
                    float(joint_above[u, lvl, c]),
                    float(unit_above[u, lvl]),
                    float(concepts[c]),
                    float(total),
                )
    return out


def random_dissection_data(
    seed: int,
    batch: int,
    units: int,
    concepts: int,
    low: tuple[int, int],
    high: tuple[int, int],
    ties: str,
) -> tuple[Tensor, Tensor]:
    """Activations with optional ties and multi-label masks with a hierarchy and rare concepts."""
    g = torch.Generator().manual_seed(seed)
    activations = torch.randn(batch, units, *low, generator=g) * 2
    if ties == "relu":
        activations = activations.relu()
    elif ties == "round":
        activations = (activations * 2).round() / 2
    rates = torch.rand(concepts, generator=g) * (
        torch.rand(concepts, generator=g) < 0.8
    )  # some absent
    masks = torch.rand(batch, concepts, *high, generator=g) < rates.view(1, -1, 1, 1)
    if concepts > 1:
        masks[:, 1] &= masks[:, 0]  # concept 1 is a part of concept 0
    return activations, masks
