"""Candidate levels, snapping and the two threshold rules."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_dissect_callbacks.functional.threshold import (
    candidate_fractions,
    counts_above,
    dense_fractions,
    iqr_rule,
    nearest_fraction_index,
    quantile_levels,
    quantile_rule,
    snap_levels,
)
from tests.metrics._reference import reference_iqr_table


def test_candidate_fractions_are_the_papers_log_grid():
    f = candidate_fractions(100, 1e-3)
    assert f.shape == (100,)
    assert f[0].item() == 1.0 and f[-1].item() == pytest.approx(1e-3)
    ratios = f[1:] / f[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 10 ** (-3 / 99)))


def test_dense_fractions_surround_the_target_geometrically():
    f = dense_fractions(0.99, 5, span=4.0)
    assert torch.allclose(f, torch.tensor([0.04, 0.02, 0.01, 0.005, 0.0025], dtype=torch.float64))
    assert dense_fractions(0.99, 1).tolist() == [pytest.approx(0.01)]
    assert dense_fractions(0.99, 0).numel() == 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300), ties=st.booleans())
def test_quantile_levels_equal_torch_quantile(seed, n, ties):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(3, n, generator=g, dtype=torch.float64)
    if ties:
        values = values.round()
    q = torch.tensor([0.0, 0.1, 0.5, 0.99, 0.999, 1.0], dtype=torch.float64)
    expected = torch.quantile(values, q, dim=1).T
    assert torch.allclose(quantile_levels(values, q), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_quantile_levels_sort_exactly_like_a_float_sort(dtype):
    g = torch.Generator().manual_seed(0)
    values = (torch.randn(4, 257, generator=g) * 10).to(dtype)
    tiny = torch.finfo(dtype).tiny
    values[0, :40] = 0.0
    values[0, 40:80] = -0.0
    values[1, :9] = torch.tensor([math.inf, -math.inf, tiny, -tiny, tiny / 4, -tiny / 4, 1, -1, 0])
    values[2] = values[2].round()  # ties
    q = torch.linspace(0, 1, 33, dtype=torch.float64)
    ordered = values.sort(dim=1).values.double()
    position = q * (values.shape[1] - 1)
    below, above = position.floor().long(), position.ceil().long()
    weight = (position - below).expand(4, -1)
    expected = torch.lerp(ordered[:, below], ordered[:, above], weight).to(dtype)
    got = quantile_levels(values, q)
    assert torch.equal(got.isnan(), expected.isnan())  # inf - inf interpolates to NaN alike
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-6, 1.0, 1e4]),
    offset=st.sampled_from([0.0, 1.0, -300.0]),
)
def test_snapped_levels_lie_on_a_power_of_two_grid_close_to_the_input(seed, scale, offset):
    g = torch.Generator().manual_seed(seed)
    levels = (torch.randn(4, 30, generator=g) * scale + offset * scale).sort(dim=1).values
    snapped = snap_levels(levels, num_cells=1024)
    assert torch.all(snapped[:, 1:] >= snapped[:, :-1])
    span = (levels.max(1).values - levels.min(1).values).double()
    magnitude = levels.abs().max(1).values.double()
    # the step is the smallest power of two giving <= 1024 cells and grid indices <= 2**22
    step = torch.exp2(torch.ceil(torch.log2(torch.maximum(span / 1024, magnitude * 2.0**-22))))
    grid = snapped.double() / step[:, None]
    assert torch.equal(grid, grid.round())
    assert torch.all((snapped.double() - levels.double()).abs() <= step[:, None] / 2)
    assert torch.equal(snap_levels(snapped, num_cells=1024), snapped)  # idempotent


def test_snapping_keeps_round_levels():
    levels = torch.tensor([[0.0, 0.5, 1.0, 2.0]])
    assert torch.equal(snap_levels(levels), levels)


def test_counts_above_sum_the_higher_bins():
    bins = torch.tensor([[[5, 1], [1, 0], [0, 2], [2, 2]]])  # [U=1, L+1=4, C=2]
    assert torch.equal(counts_above(bins, dim=1), torch.tensor([[[3, 4], [2, 4], [2, 2]]]))


def test_quantile_rule_picks_the_closest_fraction_and_the_lowest_on_ties():
    above = torch.tensor([[100, 30, 12, 8, 0]])
    assert quantile_rule(above, 1000, 0.99).tolist() == [2]
    # fractions exact in binary; target 0.25: distances tie between levels -> the first wins
    assert quantile_rule(torch.tensor([[6, 3, 1, 0], [4, 4, 0, 0]]), 8, 0.75).tolist() == [1, 0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), levels=st.integers(1, 12), targets=st.integers(1, 5))
def test_nearest_fraction_index_equals_brute_force_argmin(seed, levels, targets):
    g = torch.Generator().manual_seed(seed)
    fraction = torch.randint(0, 8, (4, levels), generator=g).double()
    fraction = fraction.sort(1, descending=True).values / 7
    wanted = torch.randint(0, 15, (targets,), generator=g).double() / 14
    brute = (fraction[:, :, None] - wanted).abs().argmin(dim=1)
    assert torch.equal(nearest_fraction_index(fraction, wanted), brute)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_iqr_rule_finds_the_maximum_of_a_brute_force_search(seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(3, 200, generator=g)
    concepts = torch.rand(4, 200, generator=g) < torch.tensor([[0.05], [0.3], [0.6], [0.0]])
    concepts[1] |= values[0] > 0.5  # unit 0 tracks concept 1 partly
    levels = quantile_levels(values, torch.linspace(0, 1, 9)[1:-1].double())
    above = values[:, None, :] > levels[:, :, None]  # [U, L, N]
    unit_above = above.sum(-1)
    joint = torch.einsum("uln,cn->ulc", above.double(), concepts.double()).long()
    index, iqr = iqr_rule(joint, unit_above, concepts.sum(-1), 200)
    reference = reference_iqr_table(joint, unit_above, concepts.sum(-1), 200)  # [U, L, C]
    best = reference.max(axis=1)
    chosen = np.take_along_axis(reference, index.numpy()[:, None, :], axis=1)[:, 0]
    np.testing.assert_allclose(chosen, best, atol=1e-12)
    np.testing.assert_allclose(iqr.numpy(), best, atol=1e-12)
    assert torch.all(iqr[:, 3] == 0)  # an absent concept carries no information


BAD = [
    (
        lambda: quantile_rule(torch.ones(2, 3), 10, 1.5),
        "`quantile` to be a float in (0, 1), but got 1.5.",
    ),
    (lambda: candidate_fractions(0), "`num_levels` to be an int ≥ 1, but got 0."),
    (lambda: candidate_fractions(10, 0.0), "`min_fraction` to be a float in (0, 1), but got 0.0."),
    (lambda: dense_fractions(0.99, -1), "`num_dense_levels` to be an int ≥ 0, but got -1."),
    (lambda: snap_levels(torch.tensor([[1.0, 0.0]])), "`levels` to be sorted ascending"),
    (lambda: snap_levels(torch.tensor([[0.0, math.nan]])), "`levels` to be finite"),
    (lambda: snap_levels(torch.zeros(3)), "`levels` of shape [U, L] with L >= 1, but got [3]."),
    (lambda: quantile_levels(torch.zeros(2, 0), torch.tensor([0.5])), "shape [U, N] with N >= 1"),
    (
        lambda: nearest_fraction_index(torch.tensor([[0.1, 0.5]]), torch.tensor([0.2])),
        "Expected `fraction_above` to be non-increasing along each row.",
    ),
]


@pytest.mark.parametrize(("call", "message"), BAD)
def test_bad_input_gets_one_clear_error(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
