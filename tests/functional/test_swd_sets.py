"""The SWD of many descriptor sets at once: each set's value equals the functional SWD of that set
alone (same directions), whatever the chunking."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_dissect_callbacks.engines import artifacts
from gan_dissect_callbacks.functional import swd_sets
from gan_dissect_callbacks.functional.swd import (
    laplacian_pyramid,
    random_directions,
    sliced_wasserstein,
    sorted_projections,
    swd_from_descriptors,
)
from gan_dissect_callbacks.functional.swd_sets import (
    draw_directions,
    sort_real,
    swd_of_sets,
    unit_swd_scores,
)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    m=st.integers(1, 30),
    sets=st.integers(1, 4),
    dim=st.integers(1, 6),
    projections=st.integers(1, 9),
    block=st.sampled_from([1 << 23, 7, 64]),
    seed=st.integers(0, 10_000),
)
def test_batched_sliced_w1_equals_sliced_wasserstein_of_each_set(
    n: int, m: int, sets: int, dim: int, projections: int, block: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, dim, generator=g)
    fakes = torch.randn(sets, m, dim, generator=g) ** 3
    directions = random_directions(dim, projections, torch.Generator().manual_seed(seed))
    previous = swd_sets._BLOCK_ELEMENTS
    swd_sets._BLOCK_ELEMENTS = block  # tiny blocks force every chunking path
    try:
        real_sorted = torch.cat(sorted_projections(real, directions))
        got = swd_sets._batched_sliced_w1(real_sorted, fakes, directions)
    finally:
        swd_sets._BLOCK_ELEMENTS = previous
    for i in range(sets):
        expected = sliced_wasserstein(
            real, fakes[i], projections, torch.Generator().manual_seed(seed)
        )
        assert got[i].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    num_real=st.integers(1, 30),
    num_images=st.integers(1, 8),
    per_image=st.integers(1, 5),
    units=st.integers(1, 5),
    k=st.integers(1, 4),
    levels=st.integers(1, 2),
    seed=st.integers(0, 10_000),
)
def test_unit_swd_scores_equal_the_swd_of_each_units_own_images(
    num_real: int, num_images: int, per_image: int, units: int, k: int, levels: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    resolutions = [32, 16][:levels]
    real = {r: torch.randn(num_real, 3, 7, 7, generator=g) for r in resolutions}
    images = {r: torch.randn(num_images, per_image, 147, generator=g) ** 3 for r in resolutions}
    top = torch.randint(0, num_images, (units, k), generator=g)
    got = unit_swd_scores(real, images, top, 12, torch.Generator().manual_seed(seed))
    for u in range(units):
        own = {r: images[r][top[u]].reshape(-1, 3, 7, 7) for r in resolutions}
        expected = swd_from_descriptors(real, own, 12, torch.Generator().manual_seed(seed))
        assert got[u].item() == pytest.approx(expected.average.item(), rel=1e-5, abs=1e-4)


def test_unit_swd_scores_refuses_mismatched_levels_and_bad_indices() -> None:
    real = {16: torch.randn(4, 3, 7, 7)}
    images = {16: torch.randn(2, 3, 147)}
    with pytest.raises(ValueError, match="same, non-empty set of levels"):
        unit_swd_scores(real, {32: images[16]}, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="index the 2 images"):
        unit_swd_scores(real, images, torch.tensor([[2]]))
    with pytest.raises(ValueError, match=r"`top_samples` to have shape \[U, k\]"):
        unit_swd_scores(real, images, torch.tensor([0, 1]))


def test_unit_swd_scores_is_still_importable_from_the_artifact_engine() -> None:
    assert artifacts.unit_swd_scores is unit_swd_scores


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(1, 10),
    sets=st.integers(1, 3),
    size=st.sampled_from(["equal", "a quarter", "other"]),
    levels=st.integers(1, 2),
    seed=st.integers(0, 10_000),
)
def test_sets_of_the_real_size_or_another_equal_the_plain_swd_of_each_set(
    k: int, sets: int, size: str, levels: int, seed: int
) -> None:
    # Verification compares sets as large as the real set and unit scoring sets a fraction of it
    # (summed gap by gap); other sizes take the binary-search path. All equal one
    # swd_from_descriptors call per set.
    g = torch.Generator().manual_seed(seed)
    n = 4 * k
    m = {"equal": n, "a quarter": k, "other": n + 3}[size]
    real = {16 << i: torch.randn(n, 3, 7, 7, generator=g) for i in range(levels)}
    fakes = {r: torch.randn(sets, m, 147, generator=g) ** 3 for r in real}
    sorted_real = sort_real(real, draw_directions(real, 9, torch.Generator().manual_seed(seed)))
    got = swd_of_sets(sorted_real, fakes)
    for i in range(sets):
        own = {r: f[i].view(m, 3, 7, 7) for r, f in fakes.items()}
        expected = swd_from_descriptors(real, own, 9, torch.Generator().manual_seed(seed))
        assert got[i].item() == pytest.approx(expected.average.item(), rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("r", [2, 16, 32])
def test_blocks_of_real_values_give_the_brute_force_w1_with_ties_and_values_on_block_edges(
    r: int,
) -> None:
    # Integer-valued points put many set values exactly on, or strictly inside, their block of
    # r real values: the closed form (outside the block) and the gap-by-gap sum (inside) meet.
    g = torch.Generator().manual_seed(r)
    m, sets = 24, 3
    real = torch.randint(-4, 5, (r * m, 1), generator=g).float()
    fakes = torch.randint(-5, 6, (sets, m, 1), generator=g).float()
    fakes[0] = real[::r]  # every value on a block edge
    directions = torch.tensor([[1.0, -1.0]])
    real_sorted = torch.cat(sorted_projections(real, directions))
    got = swd_sets._batched_sliced_w1(real_sorted, fakes, directions)
    for s in range(sets):
        # Brute force: repeat each set value r times and take the mean gap of sorted values.
        per_direction = []
        for p in range(2):
            a = (fakes[s, :, 0] * directions[0, p]).sort().values.repeat_interleave(r)
            b = (real[:, 0] * directions[0, p]).sort().values
            per_direction.append((a - b).abs().double().mean())
        assert got[s].item() == pytest.approx(float(sum(per_direction) / 2), rel=1e-6, abs=1e-9)


def test_the_real_side_sorted_into_place_equals_the_sorted_projections_of_every_chunk() -> None:
    g = torch.Generator().manual_seed(0)
    real = {16: torch.randn(70, 3, 7, 7, generator=g)}
    directions = draw_directions(real, 300, g)  # three chunks, the last one short
    from gan_dissect_callbacks.functional.swd import normalize_descriptors

    flat = normalize_descriptors(real[16]).flatten(1)
    expected = torch.cat(sorted_projections(flat, directions[16]))
    assert torch.equal(sort_real(real, directions).projections[16], expected)


@pytest.mark.parametrize(("size", "batches"), [(32, [3, 3, 1]), (64, [1, 6]), (16, [7])])
def test_descriptors_cut_batch_by_batch_at_drawn_corners_equal_one_cut_of_the_whole_set(
    size: int, batches: list[int]
) -> None:
    images = torch.rand(7, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    whole_rng, drawn_rng = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    whole = swd_sets.image_descriptors(images, 5, whole_rng)
    corners = swd_sets.image_descriptor_corners(7, size, 5, drawn_rng)
    assert torch.equal(drawn_rng.get_state(), whole_rng.get_state())  # the same draws
    assert sorted(corners) == sorted(whole)  # every level of the pyramid, 16 px the coarsest
    cut: dict[int, list[torch.Tensor]] = {res: [] for res in whole}
    start = 0
    for rows in batches:
        at = {res: c[start : start + rows] for res, c in corners.items()}
        for res, d in swd_sets.image_descriptors_at(images[start : start + rows], at).items():
            cut[res].append(d)
        start += rows
    for res, parts in cut.items():
        assert torch.equal(torch.cat(parts), whole[res])
    # Brute force: the descriptor of image i at corner k is the 7×7 patch of its level there.
    level = laplacian_pyramid(images, 16)[0]
    corner = int(corners[size][6, 4])
    top, left = divmod(corner, size - 6)
    patch = level[6, :, top : top + 7, left : left + 7].reshape(-1)
    assert torch.equal(whole[size][6, 4], patch)
