"""Tests of the streaming SlicedWassersteinDistance metric."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gan_dissect_callbacks.functional.swd import laplacian_pyramid, swd_from_descriptors
from gan_dissect_callbacks.metrics.swd import SlicedWassersteinDistance, _reservoir_insert


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 1.6 - 0.8
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def _state(metric: SlicedWassersteinDistance, name: str) -> torch.Tensor:
    value = metric.metric_state[name]
    assert isinstance(value, torch.Tensor)
    return value


def _state_nbytes(metric: SlicedWassersteinDistance) -> int:
    states = [_state(metric, name) for name in metric.metric_state]
    return sum(v.numel() * v.element_size() for v in states)


# --- reservoir sampling ---------------------------------------------------------------------------


def test_reservoir_insert_equals_one_by_one_algorithm_r() -> None:
    capacity, offered = 6, [5, 1, 9, 3, 20]
    batched = torch.zeros(capacity, 2)
    sequential = torch.zeros(capacity, 2)
    g_batched, g_sequential = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    seen = 0
    for count in offered:
        rows = torch.arange(seen, seen + count, dtype=torch.float32).view(-1, 1).repeat(1, 2)
        _reservoir_insert(batched, seen, rows, g_batched)
        draws = torch.rand(count, generator=g_sequential, dtype=torch.float64).tolist()
        for j, u in enumerate(draws):
            i = seen + j
            slot = i if i < capacity else int(u * (i + 1))
            if slot < capacity:
                sequential[slot] = rows[j]
        seen += count
    assert torch.equal(batched, sequential)


def test_reservoir_keeps_everything_in_order_until_full() -> None:
    reservoir = torch.full((10, 1), -1.0)
    g = torch.Generator().manual_seed(0)
    _reservoir_insert(reservoir, 0, torch.arange(4.0).view(-1, 1), g)
    _reservoir_insert(reservoir, 4, torch.arange(4.0, 7.0).view(-1, 1), g)
    assert reservoir.flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, -1, -1, -1]


def test_reservoir_is_a_uniform_sample_without_replacement() -> None:
    capacity, stream, trials = 10, 40, 1500
    counts = torch.zeros(stream)
    for trial in range(trials):
        g = torch.Generator().manual_seed(trial)
        reservoir = torch.full((capacity, 1), -1.0)
        seen = 0
        for count in (7, 1, 12, 20):
            _reservoir_insert(
                reservoir, seen, torch.arange(seen, seen + count).float().view(-1, 1), g
            )
            seen += count
        kept = reservoir.flatten().long()
        assert len(set(kept.tolist())) == capacity
        assert kept.min() >= 0
        counts[kept] += 1
    p = capacity / stream
    frequency = counts / trials
    # 5 standard errors: a fixed-seed check that fails for any position-biased scheme.
    assert (frequency - p).abs().max().item() < 5 * (p * (1 - p) / trials) ** 0.5


# --- the metric -----------------------------------------------------------------------------------


def test_identical_streams_give_exactly_zero_also_after_overflow() -> None:
    metric = SlicedWassersteinDistance(image_size=32, max_descriptors=300, num_projections=64)
    for seed in range(4):
        batch = _smooth_images(3, seed=seed)
        metric.update(batch, real=True)
        metric.update(batch.clone(), real=False)
    result = metric.compute()
    assert list(result) == ["swd_32", "swd_16", "swd_avg"]
    assert all(value.item() == 0.0 for value in result.values())


def test_swd_grows_with_high_frequency_noise() -> None:
    real = _smooth_images(8)
    noise = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    values = []
    for amplitude in (0.02, 0.05, 0.1, 0.2):
        metric = SlicedWassersteinDistance(image_size=32, max_descriptors=512, num_projections=128)
        for half in (slice(0, 4), slice(4, 8)):
            metric.update(real[half], real=True)
            metric.update((real[half] + amplitude * noise[half]).clamp(-1, 1), real=False)
        values.append(metric.compute()["swd_avg"].item())
    assert all(0 < lo < hi for lo, hi in pairwise(values)), values


def test_kept_descriptors_are_patches_of_the_pyramid_levels() -> None:
    images = _smooth_images(2, seed=3)
    metric = SlicedWassersteinDistance(image_size=32, num_descriptors_per_image=16)
    metric.update(images, real=True)
    sets = metric._descriptor_sets("real")
    levels = laplacian_pyramid(images)
    for level, (resolution, descriptors) in zip(levels, sets.items(), strict=True):
        assert descriptors.shape == (2 * 16, 3, 7, 7)
        patches = F.unfold(level, kernel_size=7).transpose(1, 2)  # [B, positions, 147]
        for row, descriptor in enumerate(descriptors.flatten(1)):
            own = patches[row // 16]
            assert (own - descriptor).abs().amax(dim=1).min().item() == 0.0, resolution


def test_compute_equals_the_functional_swd_of_the_kept_descriptors() -> None:
    metric = SlicedWassersteinDistance(
        image_size=32, max_descriptors=200, num_projections=32, seed=4
    )
    metric.update(_smooth_images(3, seed=0), real=True)
    metric.update(_smooth_images(2, seed=1), real=False)
    expected = swd_from_descriptors(
        metric._descriptor_sets("real"),
        metric._descriptor_sets("fake"),
        32,
        torch.Generator().manual_seed(4),
    ).as_dict()
    assert metric.compute() == expected


def test_results_depend_only_on_the_seed_and_never_touch_the_global_rng() -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        metric = SlicedWassersteinDistance(
            image_size=32, max_descriptors=128, num_projections=32, seed=seed
        )
        metric.update(_smooth_images(2, seed=0), real=True)
        metric.update(_smooth_images(2, seed=1), real=False)
        return metric.compute()

    state = torch.random.get_rng_state()
    first = run(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert run(0) == first
    assert run(1)["swd_avg"].item() != first["swd_avg"].item()


def test_state_stays_bounded_after_many_updates() -> None:
    metric = SlicedWassersteinDistance(image_size=64, max_descriptors=256)
    expected = 2 * 3 * 256 * 147 * 4 + 2 * 8  # 2 sets × 3 levels × rows × 147 floats + 2 counters
    assert _state_nbytes(metric) == expected
    batch = _smooth_images(4, size=64)
    for _ in range(30):
        metric.update(batch, real=True)
    metric.update(batch, real=False)
    assert _state_nbytes(metric) == expected
    assert _state(metric, "real_images_seen").tolist() == [120]
    assert _state(metric, "real_descriptors_64").shape == (256, 147)


def _duplicating_gather(
    other: SlicedWassersteinDistance | None,
) -> Callable[..., list[torch.Tensor]]:
    """A fake all-gather for a world of 2: this process's state and the other's (or itself)."""
    others = iter([_state(other, n) for n in other.metric_state]) if other is not None else None

    def gather(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
        return [tensor, next(others) if others is not None else tensor.clone()]

    return gather


def test_two_process_gather_of_identical_reservoirs_changes_nothing() -> None:
    kwargs: dict[str, Any] = {"image_size": 32, "max_descriptors": 1000, "num_projections": 32}
    single = SlicedWassersteinDistance(**kwargs)
    synced = SlicedWassersteinDistance(
        **kwargs, dist_sync_fn=_duplicating_gather(None), distributed_available_fn=lambda: True
    )
    for metric in (single, synced):
        metric.update(_smooth_images(3, seed=0), real=True)  # 384 of 1000 rows filled
        metric.update(_smooth_images(2, seed=1), real=False)
    # Each value appears twice in the union: the quantile functions, hence the SWD, are unchanged.
    for key, value in synced.compute().items():
        torch.testing.assert_close(value, single.compute()[key])


def test_two_process_gather_uses_each_process_filled_rows() -> None:
    kwargs: dict[str, Any] = {"image_size": 32, "max_descriptors": 300, "num_projections": 32}
    other = SlicedWassersteinDistance(**kwargs)
    other.update(_smooth_images(1, seed=2), real=True)  # 128 of 300 rows
    other.update(_smooth_images(3, seed=3), real=False)  # overflowing: 300 rows
    metric = SlicedWassersteinDistance(
        **kwargs, dist_sync_fn=_duplicating_gather(other), distributed_available_fn=lambda: True
    )
    metric.update(_smooth_images(2, seed=0), real=True)
    metric.update(_smooth_images(1, seed=1), real=False)
    expected_sets = {
        prefix: {
            r: torch.cat([metric._descriptor_sets(prefix)[r], other._descriptor_sets(prefix)[r]])
            for r in (32, 16)
        }
        for prefix in ("real", "fake")
    }
    assert expected_sets["real"][32].shape[0] == 256 + 128
    assert expected_sets["fake"][16].shape[0] == 128 + 300
    expected = swd_from_descriptors(
        expected_sets["real"], expected_sets["fake"], 32, torch.Generator().manual_seed(0)
    ).as_dict()
    assert metric.compute() == expected
    assert _state(metric, "real_images_seen").tolist() == [2]  # unsynced again after compute


def test_reset_can_keep_the_real_descriptors() -> None:
    metric = SlicedWassersteinDistance(
        image_size=32, max_descriptors=256, reset_real_features=False
    )
    metric.update(_smooth_images(2, seed=0), real=True)
    metric.update(_smooth_images(2, seed=1), real=False)
    kept = _state(metric, "real_descriptors_32").clone()
    metric.reset()
    assert torch.equal(_state(metric, "real_descriptors_32"), kept)
    assert _state(metric, "real_images_seen").tolist() == [2]
    assert _state(metric, "fake_images_seen").tolist() == [0]
    metric.update(_smooth_images(1, seed=2), real=True)
    with pytest.raises(RuntimeError, match=r"at least one fake image before `compute`"):
        metric.compute()


def test_kept_real_features_reuse_their_sorted_projections_until_the_real_set_changes() -> None:
    def fresh(real_batches: list[torch.Tensor], fake: torch.Tensor) -> dict[str, torch.Tensor]:
        metric = SlicedWassersteinDistance(image_size=32, max_descriptors=512, num_projections=40)
        for images in real_batches:
            metric.update(images, real=True)
        metric.update(fake, real=False)
        return metric.compute()

    real, more = _smooth_images(2, seed=0), _smooth_images(1, seed=5)
    metric = SlicedWassersteinDistance(
        image_size=32, max_descriptors=512, num_projections=40, reset_real_features=False
    )
    metric.update(real, real=True)
    for seed in (1, 2):  # the second check reuses the kept projections
        fake = _smooth_images(2, seed=seed)
        metric.update(fake, real=False)
        assert metric.compute() == fresh([real], fake)
        metric.reset()
    kept = metric._real_cache
    assert kept is not None
    metric.update(more, real=True)  # the real set changes: its projections are made again
    metric.update(fake, real=False)
    assert metric.compute() == fresh([real, more], fake)
    assert metric._real_cache is not kept


def test_forward_only_updates() -> None:
    metric = SlicedWassersteinDistance(image_size=32, max_descriptors=256)
    assert metric(_smooth_images(2), real=True) is None
    assert _state(metric, "real_images_seen").tolist() == [2]


def test_compute_without_real_images_names_the_fix() -> None:
    metric = SlicedWassersteinDistance(image_size=32)
    metric.update(_smooth_images(1), real=False)
    with pytest.raises(
        RuntimeError, match=r"real image before `compute`.*update\(images, real=True\)"
    ):
        metric.compute()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 48}, r"`image_size` to be a power of two >= 16, but got 48"),
        ({"image_size": 8}, r"`image_size` to be a power of two >= 16, but got 8"),
        (
            {"image_size": 32, "max_descriptors": 0},
            r"`max_descriptors` to be an int ≥ 1, but got 0",
        ),
        ({"image_size": 32, "seed": -1}, r"`seed` to be an int ≥ 0, but got -1"),
        ({"image_size": 32, "reset_real_features": 1}, r"`reset_real_features` to be a bool"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SlicedWassersteinDistance(**kwargs)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (
            torch.zeros(2, 3, 64, 64),
            ValueError,
            r"shape \['B', 3, 32, 32\] with B >= 1, but got \[2, 3, 64, 64\]",
        ),
        (torch.zeros(2, 1, 32, 32), ValueError, r"but got \[2, 1, 32, 32\]"),
        (torch.zeros(0, 3, 32, 32), ValueError, r"but got \[0, 3, 32, 32\]"),
        (
            torch.full((1, 3, 32, 32), 2.0),
            ValueError,
            r"values in \[-1, 1\], but got values in \[2, 2\]",
        ),
        (torch.full((1, 3, 32, 32), float("nan")), ValueError, r"finite values, but got NaN/Inf"),
        (
            torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
            TypeError,
            r"float tensor, but got a torch.uint8",
        ),
    ],
)
def test_bad_images(images: torch.Tensor, error: type[Exception], match: str) -> None:
    metric = SlicedWassersteinDistance(image_size=32)
    with pytest.raises(error, match=match):
        metric.update(images, real=True)


def test_real_must_be_a_bool() -> None:
    metric = SlicedWassersteinDistance(image_size=32)
    with pytest.raises(TypeError, match=r"`real` to be a bool, but got 1"):
        metric.update(_smooth_images(1), real=1)  # type: ignore[arg-type]
