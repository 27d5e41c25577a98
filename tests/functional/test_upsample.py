"""Bilinear upsampling on pixel centres with edge replication, checked on hand-computed cases."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_dissect_callbacks.functional import upsample
from gan_dissect_callbacks.functional.upsample import (
    UNIT_BLOCK,
    interpolation_weights,
    upsample_activations,
    upsample_at,
    upsample_unit_block,
)


def test_two_pixels_to_four_samples_pixel_centres():
    # output centres (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamp, 1/4, 3/4, clamp
    out = upsample_activations(torch.tensor([[[[0.0, 4.0]]]]), (1, 4))
    assert torch.equal(out, torch.tensor([[[[0.0, 1.0, 3.0, 4.0]]]]))


def test_two_by_two_to_four_by_four():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor(
        [
            [1.00, 1.25, 1.75, 2.00],
            [1.50, 1.75, 2.25, 2.50],
            [2.50, 2.75, 3.25, 3.50],
            [3.00, 3.25, 3.75, 4.00],
        ]
    )
    assert torch.equal(upsample_activations(x, (4, 4))[0, 0], expected)


def test_non_integer_scale():
    # 2 -> 3: centres at 1/6·... : -1/6 (clamped), 1/2, 7/6 (clamped)
    out = upsample_activations(torch.tensor([[[[0.0, 2.0]]]]), (1, 3))
    assert torch.equal(out, torch.tensor([[[[0.0, 1.0, 2.0]]]]))


def test_border_replicates_the_edge_instead_of_fading_to_zero():
    # zero padding (the 2020 code) would give < 1 in a 4 px border band at 8x8 -> 64x64
    out = upsample_activations(torch.ones(1, 1, 8, 8), (64, 64))
    assert torch.equal(out, torch.ones(1, 1, 64, 64))


def test_no_half_pixel_shift():
    # a ramp stays centred: the 2019 code's shift would make out[i] + out[7 - i] != 1
    out = upsample_activations(torch.tensor([[[[0.0, 1.0]]]]), (1, 8))[0, 0, 0]
    assert torch.equal(out + out.flip(0), torch.ones(8))
    assert out[0].item() == 0.0 and out[-1].item() == 1.0


def test_output_is_channels_last_with_input_dtype():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    out = upsample_activations(x, (8, 10))
    assert out.shape == (2, 3, 8, 10) and out.dtype == torch.float64
    assert out.is_contiguous(memory_format=torch.channels_last)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    units=st.integers(1, 2 * UNIT_BLOCK + 5),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    size=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    power=st.integers(-20, 20),
)
def test_bitwise_independent_of_batching_blocks_and_power_of_two_scaling(
    seed, batch, units, h, w, size, power
):
    """The streaming counter relies on all three to equal an in-memory reference exactly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, units, h, w, generator=g) * 10
    full = upsample_activations(x, size)
    per_sample = torch.cat([upsample_activations(x[i : i + 1], size) for i in range(batch)])
    assert torch.equal(full, per_sample)
    for block in range(-(-units // UNIT_BLOCK)):
        part = full[:, block * UNIT_BLOCK : (block + 1) * UNIT_BLOCK]
        assert torch.equal(upsample_unit_block(x, size, block), part)
    assert torch.equal(upsample_activations(x * 2.0**power, size), full * 2.0**power)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 3),
    units=st.integers(1, 40),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    size=st.tuples(st.integers(1, 24), st.integers(1, 24)),
)
def test_upsample_at_gives_the_upsampled_values_at_those_pixels(seed, batch, units, h, w, size):
    """Equal up to the last bit (F.interpolate adds the same four terms in another order)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, units, h, w, generator=g) * 10
    full = upsample_activations(x, size).permute(1, 0, 2, 3).reshape(units, -1)
    pixels = torch.randint(0, full.shape[1], (50,), generator=g)
    # F.interpolate rounds the sample position to float32 (an error that grows with the input
    # size) and each term: a few ulps of the largest input per input pixel, no more.
    bound = 2 * torch.finfo(torch.float32).eps * float(x.abs().max()) * (max(h, w) + 4)
    torch.testing.assert_close(upsample_at(x, size, pixels), full[:, pixels], rtol=0, atol=bound)
    # Dyadic weights (integer scale factors) and the edges leave nothing to round.
    small = torch.randint(-8, 8, (batch, units, h, w), generator=g).float()
    exact = upsample_activations(small, (4 * h, 2 * w)).permute(1, 0, 2, 3).reshape(units, -1)
    every = torch.arange(exact.shape[1])
    assert torch.equal(upsample_at(small, (4 * h, 2 * w), every), exact)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_upsample_at_reads_in_chunks_what_it_reads_at_once(monkeypatch, chunk):
    g = torch.Generator().manual_seed(chunk)
    x = torch.randn(2, 5, 3, 4, generator=g)
    pixels = torch.randint(0, 2 * 10 * 9, (101,), generator=g)
    whole = upsample_at(x, (10, 9), pixels)
    monkeypatch.setattr(upsample, "_CHUNK_VALUES", chunk)  # chunks of 1, 1 and 12 pixels
    assert torch.equal(upsample_at(x, (10, 9), pixels), whole)


def test_interpolation_weights_replicate_the_edges_and_sum_to_one():
    first, second, w_first, w_second = interpolation_weights(3, 12, torch.float64)
    assert first.min() == 0 and second.max() == 2
    assert torch.equal(w_first + w_second, torch.ones(12, dtype=torch.float64))
    edge = (first == second) | (w_second == 0)
    assert edge[0] and edge[-1]  # outside the first and last centres: one pixel, weight 1


ONE = torch.zeros(1, 1, 2, 2)
BAD = [
    (lambda: upsample_activations(torch.zeros(2, 3, 4), (8, 8)), ValueError, "shape [B, U, h, w]"),
    (
        lambda: upsample_activations(ONE.long(), (4, 4)),
        TypeError,
        "Expected argument `activations` to be a float tensor, but got torch.int64.",
    ),
    (
        lambda: upsample_activations(ONE, (4, 0)),
        ValueError,
        "a pair of positive ints (height, width)",
    ),
    (
        lambda: upsample_activations(ONE, 4),
        ValueError,
        "a pair of positive ints (height, width), but got 4.",
    ),
    (
        lambda: upsample_unit_block(torch.zeros(1, 3, 2, 2), (4, 4), 1),
        ValueError,
        "Expected argument `block` to be an int in [0, 1), but got 1.",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD)
def test_bad_input_gets_one_clear_error(call, error, match):
    with pytest.raises(error, match=re.escape(match)):
        call()
