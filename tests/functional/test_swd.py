"""Tests of the functional sliced Wasserstein distance (Progressive GAN's SWD)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_dissect_callbacks.functional.swd import (
    laplacian_pyramid,
    normalize_descriptors,
    random_directions,
    real_projections,
    sample_descriptors,
    sliced_wasserstein,
    swd,
    swd_from_descriptors,
)

KERNEL = [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16]


def _mirror(i: int, n: int) -> int:
    """Mirror an index into [0, n) without repeating the edge pixel (…, 2, 1, 0, 1, 2, …)."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


def _ref_down(img: list[list[float]]) -> list[list[float]]:
    n = len(img)
    return [
        [
            sum(
                KERNEL[a] * KERNEL[b] * img[_mirror(2 * y + a - 2, n)][_mirror(2 * x + b - 2, n)]
                for a in range(5)
                for b in range(5)
            )
            for x in range(n // 2)
        ]
        for y in range(n // 2)
    ]


def _ref_up(img: list[list[float]]) -> list[list[float]]:
    n = 2 * len(img)
    spread = [[img[y // 2][x // 2] if y % 2 == 0 and x % 2 == 0 else 0.0 for x in range(n)]
              for y in range(n)]  # fmt: skip
    return [
        [
            4
            * sum(
                KERNEL[a] * KERNEL[b] * spread[_mirror(y + a - 2, n)][_mirror(x + b - 2, n)]
                for a in range(5)
                for b in range(5)
            )
            for x in range(n)
        ]
        for y in range(n)
    ]


def _ref_w1(a: list[float], b: list[float]) -> float:
    """Exact 1-D Wasserstein-1 as the area between the two empirical CDFs."""
    points = sorted(set(a) | set(b))
    total = 0.0
    for left, right in pairwise(points):
        cdf_a = sum(v <= left for v in a) / len(a)
        cdf_b = sum(v <= left for v in b) / len(b)
        total += abs(cdf_a - cdf_b) * (right - left)
    return total


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 1.6 - 0.8
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


# --- Laplacian pyramid ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [(16, [16]), (32, [32, 16]), (64, [64, 32, 16])])
def test_pyramid_levels_down_to_16_px(size: int, expected: list[int]) -> None:
    levels = laplacian_pyramid(torch.zeros(2, 3, size, size))
    assert [tuple(level.shape) for level in levels] == [(2, 3, s, s) for s in expected]


def test_pyramid_matches_brute_force_blur_and_resample() -> None:
    image = torch.rand(
        1, 2, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    fine, coarse = laplacian_pyramid(image)
    for c in range(2):
        plane = image[0, c].tolist()
        down = _ref_down(plane)
        up = _ref_up(down)
        expected_fine = [[plane[y][x] - up[y][x] for x in range(32)] for y in range(32)]
        torch.testing.assert_close(coarse[0, c], torch.tensor(down, dtype=torch.float64))
        torch.testing.assert_close(fine[0, c], torch.tensor(expected_fine, dtype=torch.float64))


@settings(max_examples=20, deadline=None)
@given(value=st.floats(-1, 1), size=st.sampled_from([16, 32, 64]))
def test_pyramid_of_a_constant_image_is_flat(value: float, size: int) -> None:
    levels = laplacian_pyramid(torch.full((1, 3, size, size), value, dtype=torch.float64))
    for band in levels[:-1]:
        assert band.abs().max().item() < 1e-12
    torch.testing.assert_close(levels[-1], torch.full_like(levels[-1], value))


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 3, 32, 16), r"H == W a power of two >= 16, but got \[2, 3, 32, 16\]"),
        (torch.zeros(2, 3, 24, 24), r"but got \[2, 3, 24, 24\]"),
        (torch.zeros(2, 3, 8, 8), r"but got \[2, 3, 8, 8\]"),
        (torch.zeros(0, 3, 32, 32), r"B >= 1"),
        (torch.zeros(3, 32, 32), r"shape \[B, C, H, W\]"),
        (torch.full((1, 3, 16, 16), float("nan")), "finite values"),
    ],
)
def test_pyramid_rejects_bad_images(images: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        laplacian_pyramid(images)


def test_pyramid_rejects_integer_images_and_bad_min_resolution() -> None:
    with pytest.raises(TypeError, match=r"`images` to be a float tensor, but got a torch.uint8"):
        laplacian_pyramid(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"`min_resolution` to be a power of two >= 2, but got 12"):
        laplacian_pyramid(torch.zeros(1, 3, 16, 16), min_resolution=12)


# --- descriptors ----------------------------------------------------------------------------------


def test_descriptors_are_patches_of_their_own_image_at_every_valid_position() -> None:
    b, c, s, p, k = 3, 2, 9, 7, 200
    # Every value encodes (image, channel, row, column), so a patch reveals where it came from.
    level = (
        torch.arange(b).view(b, 1, 1, 1) * 10_000
        + torch.arange(c).view(1, c, 1, 1) * 1_000
        + torch.arange(s).view(1, 1, s, 1) * 10
        + torch.arange(s).view(1, 1, 1, s)
    ).float()
    descriptors = sample_descriptors(level, k, p, torch.Generator().manual_seed(0))
    assert descriptors.shape == (b * k, c, p, p)
    corners = set()
    for row, patch in enumerate(descriptors):
        image = row // k
        top, left = int(patch[0, 0, 0] - image * 10_000) // 10, int(patch[0, 0, 0]) % 10
        assert torch.equal(patch, level[image, :, top : top + p, left : left + p])
        corners.add((top, left))
    assert corners == {(y, x) for y in range(s - p + 1) for x in range(s - p + 1)}


def test_descriptors_are_determined_by_the_generator() -> None:
    level = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    first = sample_descriptors(level, 8, 7, torch.Generator().manual_seed(5))
    again = sample_descriptors(level, 8, 7, torch.Generator().manual_seed(5))
    other = sample_descriptors(level, 8, 7, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    state = torch.random.get_rng_state()
    sample_descriptors(level, 8, 7)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_descriptors_reject_bad_arguments() -> None:
    level = torch.zeros(1, 3, 16, 16)
    with pytest.raises(
        ValueError, match=r"`level` to have shape \[B, C, S, S\] with S >= patch_size"
    ):
        sample_descriptors(torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"`num_per_image` to be an int ≥ 1, but got 0"):
        sample_descriptors(level, num_per_image=0)
    with pytest.raises(ValueError, match=r"`patch_size` to be an int ≥ 1, but got 2.5"):
        sample_descriptors(level, patch_size=2.5)  # type: ignore[arg-type]


def test_normalisation_per_channel_over_the_whole_set() -> None:
    g = torch.Generator().manual_seed(0)
    d = torch.rand(50, 3, 7, 7, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 5.0, 0.1]
    ).view(1, 3, 1, 1) + torch.tensor([0.0, -3.0, 9.0]).view(1, 3, 1, 1)
    d[:, 2] = 4.0  # a constant channel is only centred
    out = normalize_descriptors(d)
    for ch in range(2):
        values = d[:, ch].flatten().tolist()
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        torch.testing.assert_close(out[:, ch], (d[:, ch] - mean) / std)
    assert torch.equal(out[:, 2], torch.zeros_like(out[:, 2]))


def test_normalisation_rejects_flat_descriptors() -> None:
    with pytest.raises(ValueError, match=r"`descriptors` to have shape \[N, C, p, p\]"):
        normalize_descriptors(torch.zeros(10, 147))


# --- sliced Wasserstein ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    a=st.lists(st.integers(-20, 20), min_size=1, max_size=12),
    b=st.lists(st.integers(-20, 20), min_size=1, max_size=12),
)
def test_one_dimensional_sets_give_the_exact_wasserstein_distance(
    a: list[int], b: list[int]
) -> None:
    ta = torch.tensor(a, dtype=torch.float64).view(-1, 1) / 4
    tb = torch.tensor(b, dtype=torch.float64).view(-1, 1) / 4
    result = sliced_wasserstein(ta, tb, num_projections=3).item()
    assert result == pytest.approx(_ref_w1([v / 4 for v in a], [v / 4 for v in b]), abs=1e-12)


def test_projections_match_a_brute_force_mean_over_the_same_directions() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(13, 5, generator=g, dtype=torch.float64)
    b = torch.randn(7, 5, generator=g, dtype=torch.float64) + 0.5
    num_projections = 130  # more than one chunk of 128 directions
    directions = random_directions(5, num_projections, torch.Generator().manual_seed(9)).double()
    expected = (
        sum(
            _ref_w1((a @ directions[:, j]).tolist(), (b @ directions[:, j]).tolist())
            for j in range(num_projections)
        )
        / num_projections
    )
    result = sliced_wasserstein(a, b, num_projections, torch.Generator().manual_seed(9))
    assert result.item() == pytest.approx(expected, rel=1e-5)


def _plain_sliced_w1(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """The quantile-function integral on every direction, in float64 with ``torch.sort``."""
    n, m = a.shape[0], b.shape[0]
    steps = sorted({i * m for i in range(1, n + 1)} | {j * n for j in range(1, m + 1)})
    total = 0.0
    for j in range(directions.shape[1]):
        pa = (a.double() @ directions[:, j].double()).sort().values
        pb = (b.double() @ directions[:, j].double()).sort().values
        previous = 0
        for t in steps:
            gap = (pa[(t + m - 1) // m - 1] - pb[(t + n - 1) // n - 1]).abs().item()
            total += gap * (t - previous) / (n * m)
            previous = t
    return total / directions.shape[1]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 20),
    m=st.sampled_from([None, 1, 3, 7, 20]),
    projections=st.integers(1, 140),
    seed=st.integers(0, 1000),
)
def test_sliced_wasserstein_equals_the_plain_quantile_integral(
    n: int, m: int | None, projections: int, seed: int
) -> None:
    # m=None: both sets of one size, the sorted-gap path; otherwise the segment path.
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 4, generator=g)
    b = torch.randn(n if m is None else m, 4, generator=g) ** 3
    directions = random_directions(4, projections, torch.Generator().manual_seed(seed))
    got = sliced_wasserstein(a, b, projections, torch.Generator().manual_seed(seed)).item()
    assert got == pytest.approx(_plain_sliced_w1(a, b, directions), rel=1e-5, abs=1e-6)


def test_kept_real_projections_give_exactly_the_same_swd() -> None:
    g = torch.Generator().manual_seed(0)
    real = {32: torch.randn(50, 3, 7, 7, generator=g), 16: torch.randn(50, 3, 7, 7, generator=g)}
    fakes = [{r: torch.randn(size, 3, 7, 7, generator=g) ** 3 for r in real} for size in (50, 20)]
    kept = real_projections(real, 200, torch.Generator().manual_seed(3))
    for fake in fakes:
        fresh = swd_from_descriptors(real, fake, 200, torch.Generator().manual_seed(3))
        again = swd_from_descriptors(
            real, fake, 200, torch.Generator().manual_seed(3), real_projections=kept
        )
        assert again.as_dict() == fresh.as_dict()
        assert fresh.average.item() > 0


def test_identical_sets_give_exactly_zero_in_any_row_order() -> None:
    a = torch.randn(300, 147, generator=torch.Generator().manual_seed(0))
    shuffled = a[torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    assert sliced_wasserstein(a, a).item() == 0.0
    assert sliced_wasserstein(a, shuffled).item() == 0.0


def test_sliced_wasserstein_is_symmetric_and_ignores_duplication() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 6, generator=g, dtype=torch.float64)
    b = torch.randn(25, 6, generator=g, dtype=torch.float64) * 2
    ab = sliced_wasserstein(a, b, 64, torch.Generator().manual_seed(1))
    ba = sliced_wasserstein(b, a, 64, torch.Generator().manual_seed(1))
    doubled = sliced_wasserstein(torch.cat([a, a]), b, 64, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ab, ba)
    torch.testing.assert_close(ab, doubled)
    assert ab.item() > 0


def test_sliced_wasserstein_rejects_bad_arguments() -> None:
    a = torch.zeros(4, 3)
    with pytest.raises(
        ValueError, match=r"`b` to have shape \[N, D\] with N >= 1, but got \[0, 3\]"
    ):
        sliced_wasserstein(a, torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"same number of columns D, but got 3 and 2"):
        sliced_wasserstein(a, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"`num_projections` to be an int ≥ 1, but got 0"):
        sliced_wasserstein(a, a, num_projections=0)


# --- SWD ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "keys"), [(32, [32, 16]), (64, [64, 32, 16])])
def test_swd_reports_every_level_and_their_average(size: int, keys: list[int]) -> None:
    real, fake = _smooth_images(3, size, seed=0), _smooth_images(2, size, seed=1)
    result = swd(real, fake, num_descriptors_per_image=16, num_projections=32)
    assert list(result.per_level) == keys
    torch.testing.assert_close(result.average, torch.stack(list(result.per_level.values())).mean())
    assert list(result.as_dict()) == [*(f"swd_{k}" for k in keys), "swd_avg"]
    assert all(value.item() > 0 for value in result.per_level.values())


def test_swd_of_identical_images_is_exactly_zero() -> None:
    real = _smooth_images(4)
    assert swd(real, real.clone(), num_projections=64).average.item() == 0.0


def test_swd_grows_with_high_frequency_noise() -> None:
    real = _smooth_images(8)
    noise = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    values = [
        swd(real, real + amplitude * noise, num_projections=128).average.item()
        for amplitude in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)
    ]
    assert values[0] == 0.0
    assert all(lo < hi for lo, hi in pairwise(values)), values


def test_swd_ignores_a_per_channel_affine_change_of_the_whole_set() -> None:
    # Each set is normalised per colour channel by its own statistics, as in the paper.
    real = _smooth_images(4).double()
    shifted = real * torch.tensor([0.5, 2.0, 1.0]).view(1, 3, 1, 1).double() + 0.1
    assert swd(real, shifted, num_projections=64).average.item() < 1e-9


def test_swd_is_determined_by_the_generator() -> None:
    real, fake = _smooth_images(3, seed=0), _smooth_images(3, seed=1)
    first = swd(real, fake, num_projections=32, generator=torch.Generator().manual_seed(1))
    again = swd(real, fake, num_projections=32, generator=torch.Generator().manual_seed(1))
    other = swd(real, fake, num_projections=32, generator=torch.Generator().manual_seed(2))
    assert first.as_dict() == again.as_dict()
    assert first.average.item() != other.average.item()


def test_swd_from_descriptors_needs_matching_levels() -> None:
    d = torch.zeros(4, 3, 7, 7)
    with pytest.raises(
        ValueError, match=r"same, non-empty set of levels, but got \[16, 32\] and \[16\]"
    ):
        swd_from_descriptors({32: d, 16: d}, {16: d})


def test_swd_rejects_mismatched_images() -> None:
    with pytest.raises(
        ValueError, match=r"share \[C, H, W\], but got \[3, 32, 32\] and \[3, 64, 64\]"
    ):
        swd(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"`fake_images` to have shape"):
        swd(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 30))


@pytest.mark.parametrize("sizes", [(300, 300), (300, 120), (37, 301)])
def test_swd_chunked_over_directions_equals_sorting_every_projection_at_once(
    sizes: tuple[int, int],
) -> None:
    # swd_from_descriptors sorts one chunk of directions at a time (and sums equal-size gaps in
    # float32 runs); the value must be that of sorting all projections first, to float rounding.
    from gan_dissect_callbacks.functional.swd import (
        sliced_wasserstein_sorted,
        sorted_projections,
    )

    g = torch.Generator().manual_seed(0)
    n, m = sizes
    real = {32: torch.randn(n, 3, 7, 7, generator=g), 16: torch.randn(n, 3, 7, 7, generator=g)}
    fake = {r: torch.randn(m, 3, 7, 7, generator=g) ** 3 for r in real}
    got = swd_from_descriptors(real, fake, 300, torch.Generator().manual_seed(5))  # 3 chunks
    directions = torch.Generator().manual_seed(5)
    for resolution in real:
        a = normalize_descriptors(real[resolution]).flatten(1)
        b = normalize_descriptors(fake[resolution]).flatten(1)
        d = random_directions(147, 300, directions)
        whole = sliced_wasserstein_sorted(sorted_projections(a, d), sorted_projections(b, d))
        assert got.per_level[resolution].item() == pytest.approx((whole * 1e3).item(), rel=1e-6)
