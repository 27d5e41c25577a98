"""Entropies and the information quality ratio of 2×2 tables."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_dissect_callbacks.functional.iqr import (
    contingency_table,
    entropy,
    information_quality_ratio,
    information_quality_ratio_from_counts,
    joint_entropy,
    mutual_information,
)
from tests.metrics._reference import reference_iqr


def test_perfect_tables_have_ratio_one():
    tables = torch.tensor([[[6, 0], [0, 2]], [[0, 5], [5, 0]], [[1, 0], [0, 1]]])
    assert torch.equal(information_quality_ratio(tables), torch.ones(3, dtype=torch.float64))


def test_independent_tables_have_ratio_zero():
    # rows ∝ (3, 1), columns ∝ (1, 2): every cell is the product of its marginals
    table = torch.tensor([[3, 6], [1, 2]])
    assert information_quality_ratio(table).item() == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(table).item() == pytest.approx(0.0, abs=1e-12)


def test_constant_and_empty_tables_have_ratio_zero():
    tables = torch.tensor([[[7, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [3, 0]]])
    assert torch.equal(information_quality_ratio(tables), torch.zeros(3, dtype=torch.float64))


def test_entropies_by_hand():
    assert entropy(torch.tensor([1, 1])).item() == pytest.approx(math.log(2))
    assert entropy(torch.tensor([3, 0])).item() == 0.0
    assert joint_entropy(torch.tensor([[1, 1], [1, 1]])).item() == pytest.approx(math.log(4))
    assert mutual_information(torch.tensor([[5, 0], [0, 5]])).item() == pytest.approx(math.log(2))
    # [[90, 2], [3, 5]]: H(X,Y) = 0.42805, H(X) = 0.27877, H(Y) = 0.25364 nats
    ratio = information_quality_ratio(torch.tensor([[90, 2], [3, 5]])).item()
    assert ratio == pytest.approx((0.27877 + 0.25364 - 0.42805) / 0.42805, abs=1e-4)


def test_contingency_table_from_marginals():
    table = contingency_table(torch.tensor(2), torch.tensor(3), torch.tensor(4), torch.tensor(10))
    assert torch.equal(table, torch.tensor([[5.0, 2.0], [1.0, 2.0]], dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(cells=st.lists(st.integers(0, 1000), min_size=4, max_size=4), scale=st.integers(1, 50))
def test_matches_a_plain_python_reference_and_is_scale_free(cells, scale):
    table = torch.tensor(cells).view(2, 2)
    joint, mask = cells[3], cells[2] + cells[3]
    concept, total = cells[1] + cells[3], sum(cells)
    expected = reference_iqr(joint, mask, concept, total) if total else 0.0
    got = information_quality_ratio(table).item()
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= got <= 1.0
    assert information_quality_ratio(table * scale).item() == pytest.approx(got, abs=1e-12)
    assert information_quality_ratio(table.T).item() == pytest.approx(got, abs=1e-12)  # symmetric


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_vectorised_over_leading_dims_and_from_counts(seed):
    g = torch.Generator().manual_seed(seed)
    tables = torch.randint(0, 20, (3, 4, 2, 2), generator=g)
    batched = information_quality_ratio(tables)
    one_by_one = torch.stack([information_quality_ratio(t) for t in tables.view(-1, 2, 2)])
    assert torch.equal(batched, one_by_one.view(3, 4))
    joint, mask = tables[..., 1, 1], tables[..., 1, :].sum(-1)
    concept, total = tables[..., :, 1].sum(-1), tables.sum((-2, -1))
    assert torch.equal(information_quality_ratio_from_counts(joint, mask, concept, total), batched)


def _negative_cell():
    return contingency_table(torch.tensor(5), torch.tensor(3), torch.tensor(4), torch.tensor(10))


def _negative_cell_from_counts():
    one, three, four, five = (torch.tensor(v) for v in (1, 3, 4, 5))
    return information_quality_ratio_from_counts(one, three, four, five)


BAD = [
    (lambda: information_quality_ratio(torch.ones(3, 2)), ValueError, "shape [..., 2, 2]"),
    (lambda: information_quality_ratio(-torch.ones(2, 2)), ValueError, "non-negative counts"),
    (
        lambda: information_quality_ratio(torch.ones(2, 2, dtype=torch.bool)),
        TypeError,
        "Expected argument `table` to hold integer or float counts, but got torch.bool.",
    ),
    (
        lambda: entropy([1, 2]),
        TypeError,
        "Expected argument `counts` to be a tensor, but got list.",
    ),
    (_negative_cell, ValueError, "a table cell would be negative"),
    (_negative_cell_from_counts, ValueError, "a table cell would be negative"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD)
def test_bad_input_gets_one_clear_error(call, error, match):
    with pytest.raises(error, match=re.escape(match)):
        call()
