"""IoU from pixel counts: hand-computed values, masks, broadcasting and errors."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_dissect_callbacks.functional.iou import iou_from_counts


def test_hand_computed_values():
    inter = torch.tensor([3, 5, 0, 0, 2])
    mask = torch.tensor([4, 5, 3, 0, 2])
    concept = torch.tensor([5, 5, 4, 0, 8])
    expected = torch.tensor([3 / 6, 1.0, 0.0, 0.0, 2 / 8], dtype=torch.float64)
    assert torch.equal(iou_from_counts(inter, mask, concept), expected)


def test_empty_union_is_zero_not_nan():
    out = iou_from_counts(torch.zeros(3), torch.zeros(3), torch.zeros(3))
    assert torch.equal(out, torch.zeros(3, dtype=torch.float64))


def test_broadcasts_unit_counts_against_concepts():
    inter = torch.tensor([[1, 2, 0], [2, 0, 1]])  # [U, C]
    mask = torch.tensor([[4], [3]])  # [U, 1]
    concept = torch.tensor([2, 4, 1])  # [C]
    expected = torch.tensor([[1 / 5, 2 / 6, 0 / 5], [2 / 3, 0 / 7, 1 / 3]], dtype=torch.float64)
    assert torch.equal(iou_from_counts(inter, mask, concept), expected)


def test_ratio_of_sums_not_mean_of_ratios():
    # Two images: the unit matches a large concept in the first, misses a small one in the second.
    inter, mask, concept = torch.tensor([90, 0]), torch.tensor([100, 10]), torch.tensor([100, 10])
    pooled = iou_from_counts(inter.sum(), mask.sum(), concept.sum())
    assert pooled.item() == pytest.approx(90 / 130)
    assert iou_from_counts(inter, mask, concept).mean().item() == pytest.approx((90 / 110 + 0) / 2)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 200),
    p=st.floats(0.0, 1.0),
    q=st.floats(0.0, 1.0),
)
def test_equals_iou_of_boolean_masks(seed, n, p, q):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g) < p
    b = torch.rand(n, generator=g) < q
    union = int((a | b).sum())
    expected = int((a & b).sum()) / union if union else 0.0
    got = iou_from_counts((a & b).sum(), a.sum(), b.sum())
    assert got.item() == expected


ONE = torch.tensor([1])
BAD = [
    ((torch.tensor([-1]), ONE, ONE), ValueError, "`intersection` to hold non-negative counts"),
    ((ONE, torch.tensor([-2]), ONE), ValueError, "`mask_count` to hold non-negative counts"),
    ((torch.tensor([3]), torch.tensor([2]), torch.tensor([5])), ValueError, "at most `mask_count`"),
    ((torch.ones(2), torch.ones(3), torch.ones(1)), ValueError, "broadcastable shapes"),
    (([1], ONE, ONE), TypeError, "Expected argument `intersection` to be a tensor, but got list."),
]


@pytest.mark.parametrize(("args", "error", "match"), BAD)
def test_bad_input_gets_one_clear_error(args, error, match):
    with pytest.raises(error, match=re.escape(match)):
        iou_from_counts(*args)
