"""UnitConceptIoU: exact against brute force for any batching, merging, checkpoints, errors."""

import dataclasses
import itertools
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_dissect_callbacks.functional.threshold import counts_above, quantile_rule, snap_levels
from gan_dissect_callbacks.functional.unit_concept import (
    unit_concept_compute,
    unit_concept_iou,
    unit_concept_levels,
    unit_concept_update,
)
from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU
from tests.metrics._reference import (
    brute_force_counts,
    random_dissection_data,
    reference_iou,
    reference_iqr_table,
    upsampled_values,
)

SMALL = {"num_levels": 8, "num_dense_levels": 5}


@st.composite
def streams(draw):
    batch = draw(st.integers(1, 8))
    cut = st.integers(1, max(1, batch - 1))
    cuts = sorted(draw(st.lists(cut, max_size=3, unique=True))) if batch > 1 else []
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "batch": batch,
        "units": draw(st.sampled_from([1, 2, 3, 5, 34])),  # 34 crosses a block of 32 units
        "concepts": draw(st.integers(1, 4)),
        "low": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "high": (draw(st.integers(1, 8)), draw(st.integers(1, 8))),
        "ties": draw(st.sampled_from(["none", "relu", "round"])),
        "bounds": [0, *cuts, batch],
        "calibration_samples": draw(st.integers(1, batch + 2)),
        "num_levels": draw(st.integers(1, 10)),
        "num_dense_levels": draw(st.integers(0, 6)),
    }


def _data(case):
    keys = ("seed", "batch", "units", "concepts", "low", "high", "ties")
    return random_dissection_data(*(case[k] for k in keys))


@settings(max_examples=30, deadline=None)
@given(case=streams())
def test_streaming_equals_brute_force_for_any_batching(case):
    acts, masks = _data(case)
    metric = UnitConceptIoU(
        case["units"],
        case["concepts"],
        num_levels=case["num_levels"],
        num_dense_levels=case["num_dense_levels"],
        calibration_samples=case["calibration_samples"],
    )
    bounds = case["bounds"]
    for start, stop in itertools.pairwise(bounds):
        metric.update(acts[start:stop], masks[start:stop])
    result = metric.compute()

    # levels: calibrated on the first batches holding >= calibration_samples samples (or all)
    stop = next((b for b in bounds[1:] if b >= case["calibration_samples"]), bounds[-1])
    sizes = {"num_levels": case["num_levels"], "num_dense_levels": case["num_dense_levels"]}
    expected_levels = unit_concept_levels(acts[:stop], case["high"], **sizes)
    assert torch.equal(result.levels, expected_levels)

    brute = brute_force_counts(acts, masks, result.levels)
    total = int(brute["num_pixels"])
    if metric.pending_samples == 0:  # everything counted: the raw counts are exact
        assert torch.equal(counts_above(metric.unit_bins, dim=1), brute["unit_above"])
        assert torch.equal(counts_above(metric.joint_bins, dim=1), brute["joint_above"])
    counted = brute["concept_pixels"] if metric.pending_samples == 0 else 0
    assert torch.equal(metric.concept_pixels, torch.zeros_like(metric.concept_pixels) + counted)
    assert result.num_pixels == total and result.num_samples == case["batch"]
    present = brute["concept_pixels"] / total >= 1e-4
    assert torch.equal(result.concept_present, present)

    # quantile rule: the level the rule picks from brute-force counts, which is the closest up to
    # rounding (2/150 and 1/150 lie equally far from 0.01), and the IoU exactly there
    fractions = brute["unit_above"].double() / total
    distance = (fractions - 0.01).abs()
    pick = quantile_rule(brute["unit_above"], total, 0.99)
    closest = distance.min(dim=1).values
    assert bool((distance.gather(1, pick[:, None])[:, 0] <= closest + 1e-12).all())
    assert torch.equal(result.fraction_above, fractions.gather(1, pick[:, None])[:, 0])
    assert torch.equal(result.threshold_quantile, result.levels.gather(1, pick[:, None])[:, 0])
    joint = brute["joint_above"][torch.arange(case["units"]), pick]
    mask_pixels = brute["unit_above"].gather(1, pick[:, None])
    expected = reference_iou(joint, mask_pixels, brute["concept_pixels"]) * present
    assert torch.equal(result.iou_quantile, expected)

    # IQR rule: the maximum of a brute-force search, and the IoU exactly at that level
    table = reference_iqr_table(
        brute["joint_above"], brute["unit_above"], brute["concept_pixels"], total
    )
    best = table.max(axis=1) * present.numpy()
    np.testing.assert_allclose(result.iqr.numpy(), best, atol=1e-12)
    values = upsampled_values(acts, case["high"])
    pixels = masks.permute(1, 0, 2, 3).reshape(case["concepts"], -1)
    for u in range(case["units"]):
        for c in torch.nonzero(present).flatten().tolist():
            mask = values[u] > result.threshold_iqr[u, c]
            level = int(torch.searchsorted(result.levels[u], result.threshold_iqr[u, c]))
            assert table[u, level, c] == pytest.approx(table[u, :, c].max(), abs=1e-12)
            inter = (mask & pixels[c]).sum()
            expected_iou = reference_iou(inter, mask.sum(), pixels[c].sum()).item()
            assert result.iou_iqr[u, c].item() == expected_iou


@settings(max_examples=30, deadline=None)
@given(case=streams(), counting=st.sampled_from(["combinations", "pairs", "auto"]))
def test_both_counting_paths_equal_brute_force(case, counting):
    acts, masks = _data(case)
    levels = unit_concept_levels(
        acts, case["high"], num_levels=case["num_levels"], num_dense_levels=3
    )
    counts = unit_concept_update(acts, masks, levels, counting=counting)
    brute = brute_force_counts(acts, masks, levels)
    assert torch.equal(counts_above(counts.unit_bins, dim=1), brute["unit_above"])
    assert torch.equal(counts_above(counts.joint_bins, dim=1), brute["joint_above"])
    assert torch.equal(counts.concept_pixels, brute["concept_pixels"])


def test_values_on_and_next_to_levels_are_binned_exactly():
    g = torch.Generator().manual_seed(0)
    levels = snap_levels(torch.randn(3, 40, generator=g).sort(dim=1).values * 7)
    levels[1] = snap_levels(torch.linspace(1000.0, 1000.01, 40)[None])  # tiny range far from 0
    picks = torch.randint(0, 40, (3, 6, 6), generator=g)
    on = levels.gather(1, picks.view(3, -1)).view(3, 6, 6)
    values = torch.stack(
        [on, torch.nextafter(on, torch.tensor(-1e30)), torch.nextafter(on, torch.tensor(1e30))]
    )
    masks = torch.rand(3, 2, 6, 6, generator=g) > 0.5
    counts = unit_concept_update(values, masks, levels)  # h = H: upsampling is the identity
    brute = brute_force_counts(values, masks, levels)
    assert torch.equal(counts_above(counts.unit_bins, dim=1), brute["unit_above"])
    assert torch.equal(counts_above(counts.joint_bins, dim=1), brute["joint_above"])


def _smooth(seed, batch, units, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, units, size, size, generator=g), torch.rand(
        batch, 3, 32, 32, generator=g
    ) > 0.7


def test_quantile_threshold_is_close_to_torch_quantile():
    """Calibrated on all data, the chosen level's pixel fraction is within 1% of 0.01."""
    acts, masks = _smooth(1, 48, 4)
    metric = UnitConceptIoU(4, 3, calibration_samples=48)
    for start in range(0, 48, 16):
        metric.update(acts[start : start + 16], masks[start : start + 16])
    result = metric.compute()
    values = upsampled_values(acts, (32, 32)).double()  # [U, 49152]
    low = torch.quantile(values, 0.99 - 1e-4, dim=1)
    high = torch.quantile(values, 0.99 + 1e-4, dim=1)
    assert torch.all((result.fraction_above - 0.01).abs() <= 1e-4)
    assert torch.all((low <= result.threshold_quantile) & (result.threshold_quantile <= high))


def test_quantile_threshold_calibrated_on_a_third_of_the_stream():
    """Calibrated on 2 of 6 batches, the dense levels still bracket the quantile within 2%."""
    acts, masks = _smooth(2, 96, 4)
    metric = UnitConceptIoU(4, 3, calibration_samples=32)
    for start in range(0, 96, 16):
        metric.update(acts[start : start + 16], masks[start : start + 16])
    assert torch.all((metric.compute().fraction_above - 0.01).abs() <= 2e-4)


def _fed(batches, **kwargs):
    metric = UnitConceptIoU(5, 3, **SMALL, **kwargs)
    for acts, masks in batches:
        metric.update(acts, masks)
    return metric


def _assert_same_result(a, b):
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, field.name


def _batches(seed, count, batch=3):
    data = random_dissection_data(seed, count * batch, 5, 3, (4, 4), (8, 8), "relu")
    return [
        (data[0][i : i + batch], data[1][i : i + batch]) for i in range(0, count * batch, batch)
    ]


def test_two_metrics_fed_halves_and_merged_equal_one_fed_everything():
    batches = _batches(3, 6)
    first = _fed(batches[:3], calibration_samples=3)
    second = _fed(batches[3:], levels=first.levels)
    everything = _fed(batches, calibration_samples=3)
    counts = ("bins", "pixels", "samples")
    summed = {
        k: v + second.state_dict()[k] for k, v in first.state_dict().items() if k.endswith(counts)
    }
    for key, value in summed.items():
        assert torch.equal(value, everything.state_dict()[key]), key
    first.merge_state(second)
    _assert_same_result(first.compute(), everything.compute())


def test_merging_counts_taken_at_different_levels_is_refused():
    batches = _batches(4, 2)
    first, second = (
        _fed(batches[:1], calibration_samples=1),
        _fed(batches[1:], calibration_samples=1),
    )
    with pytest.raises(RuntimeError, match="identical `levels`"):
        first.merge_state(second)


def test_checkpoint_mid_calibration_resumes_to_the_same_result():
    batches = _batches(5, 5)
    uninterrupted = _fed(batches, calibration_samples=9)
    before = _fed(batches[:2], calibration_samples=9)
    assert before.pending_samples == 6 and int(before.num_samples) == 0
    resumed = UnitConceptIoU(5, 3, **SMALL, calibration_samples=9)
    resumed.load_state_dict(before.state_dict())
    for acts, masks in batches[2:]:
        resumed.update(acts, masks)
    assert resumed.pending_samples == 0
    _assert_same_result(resumed.compute(), uninterrupted.compute())


def test_state_memory_is_flat_in_the_number_of_samples():
    units, concepts, levels = 5, 3, SMALL["num_levels"] + SMALL["num_dense_levels"]
    formula = 8 * units * (levels + 1) * (concepts + 1) + 4 * units * levels + 8 * concepts + 16
    batches = _batches(6, 10)
    metric = _fed(batches[:1], calibration_samples=3)
    assert metric.state_nbytes == formula and metric.pending_samples == 0
    for acts, masks in batches[1:]:
        metric.update(acts, masks)
    assert metric.state_nbytes == formula and metric.pending_samples == 0
    assert int(metric.num_samples) == 30


def test_batches_wait_for_calibration_and_compute_includes_them():
    batches = _batches(7, 3)
    metric = _fed(batches[:2], calibration_samples=9)
    assert metric.pending_samples == 6 and not metric.calibrated
    acts = torch.cat([a for a, _ in batches[:2]])
    masks = torch.cat([m for _, m in batches[:2]])
    _assert_same_result(metric.compute(), unit_concept_iou(acts, masks, **SMALL))
    assert not metric.calibrated  # compute() changes nothing
    metric.update(*batches[2])
    assert metric.calibrated and metric.pending_samples == 0 and int(metric.num_samples) == 9


def test_reset_forgets_calibrated_levels_but_keeps_given_ones():
    batches = _batches(8, 2)
    calibrated = _fed(batches, calibration_samples=1)
    calibrated.reset()
    assert not calibrated.calibrated
    given = UnitConceptIoU(5, 3, levels=torch.arange(6.0).repeat(5, 1))
    given.update(*batches[0])
    given.reset()
    assert given.calibrated and torch.equal(given.levels, torch.arange(6.0).repeat(5, 1))
    assert int(given.num_samples) == 0


def test_reset_counts_again_from_zero_without_a_full_copy_of_the_zeros():
    batches = _batches(9, 3)
    levels = torch.linspace(0.0, 3.0, 7).repeat(5, 1)
    metric = UnitConceptIoU(5, 3, levels=levels)
    for name in ("unit_bins", "joint_bins"):  # one zero, whatever the shape
        default = metric._defaults[name]
        assert set(default.stride()) == {0} and default.untyped_storage().nbytes() == 8
    metric.update(*batches[0])
    metric.update(*batches[1])
    assert int(metric.joint_bins.sum()) > 0
    for _ in range(2):  # the reset states are fresh tensors: counting into them twice is exact
        metric.reset()
        assert torch.equal(metric.unit_bins, torch.zeros(5, 8, dtype=torch.int64))
        assert torch.equal(metric.joint_bins, torch.zeros(5, 8, 3, dtype=torch.int64))
        metric.update(*batches[2])
        fresh = UnitConceptIoU(5, 3, levels=levels)
        fresh.update(*batches[2])
        _assert_same_result(metric.compute(), fresh.compute())
    seen = []  # moving the metric moves each count state, and its default as one zero only
    moved = metric._apply(lambda t: seen.append(tuple(t.shape)) or t.to("meta"))
    assert seen.count((5, 8, 3)) == 1 and seen.count((5, 8)) == 1
    for name in ("unit_bins", "joint_bins"):
        default = moved._defaults[name]
        assert default.device.type == "meta" and default.shape == getattr(moved, name).shape
        assert set(default.stride()) == {0}


def test_calibrate_sets_levels_from_given_activations():
    batches = _batches(9, 2)
    metric = UnitConceptIoU(5, 3, **SMALL, segmentation_size=(8, 8))
    metric.calibrate(batches[1][0])
    expected = unit_concept_levels(batches[1][0], (8, 8), **SMALL)
    assert torch.equal(metric.levels, expected)
    metric.update(*batches[0])
    assert int(metric.num_samples) == 3  # counted at once: the levels exist
    with pytest.raises(RuntimeError, match="before the first `update\\(\\)`"):
        metric.calibrate(batches[1][0])


def test_forward_accumulates_and_returns_the_batch_alone():
    batches = _batches(10, 2)
    metric = UnitConceptIoU(5, 3, **SMALL, calibration_samples=1)
    metric(*batches[0])
    batch_result = metric(*batches[1])
    alone = unit_concept_compute(unit_concept_update(*batches[1], metric.levels), metric.levels)
    _assert_same_result(batch_result, alone)
    assert int(metric.num_samples) == 6


def test_result_is_frozen_and_keeps_shapes_for_one_unit_and_concept():
    acts, masks = random_dissection_data(11, 4, 1, 1, (2, 2), (4, 4), "none")
    masks[:] = acts.repeat_interleave(2, -1).repeat_interleave(2, -2) > 0
    result = _fed_single(acts, masks)
    assert result.iou_quantile.shape == (1, 1) and result.threshold_quantile.shape == (1,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.iqr = None
    concept, iou = result.best_concept("iqr")
    assert concept.tolist() == [0] and iou.shape == (1,)
    with pytest.raises(ValueError, match="`rule` to be one of 'quantile', 'iqr'"):
        result.best_concept("best")


def _fed_single(acts, masks):
    metric = UnitConceptIoU(acts.shape[1], masks.shape[1], **SMALL, calibration_samples=1)
    metric.update(acts, masks)
    return metric.compute()


def test_rare_concepts_are_ignored_and_never_best():
    g = torch.Generator().manual_seed(12)
    acts = torch.randn(4, 2, 8, 8, generator=g)
    masks = torch.zeros(4, 2, 64, 64, dtype=torch.bool)
    masks[:, 1] = torch.rand(4, 64, 64, generator=g) > 0.5
    masks[0, 0, 0, 0] = True  # concept 0: 1 pixel in 16384 < 1e-4
    up = upsampled_values(acts, (64, 64)).view(2, 4, 64, 64).transpose(0, 1)
    masks[0, 0] |= up[0, 0] > 2.5  # make concept 0 a perfect match for unit 0... still too rare
    result = _fed_single(acts, masks)
    assert result.concept_present.tolist() == [False, True]
    assert torch.all(result.iou_quantile[:, 0] == 0) and torch.all(result.iqr[:, 0] == 0)
    assert result.best_concept("quantile")[0].tolist() == [1, 1]


def _good():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 4, 4, generator=g), torch.rand(2, 3, 8, 8, generator=g) > 0.5


NAN = "Expected finite `activations`, but got NaN or Inf values."
BAD_BATCHES = [
    (lambda m, a, k: m.update(a.masked_fill(a > 1, float("nan")), k), ValueError, NAN),
    (lambda m, a, k: m.update(a.masked_fill(a > 1, float("inf")), k), ValueError, NAN),
    (
        lambda m, a, k: m.update(a[0], k),
        ValueError,
        "Expected argument `activations` of shape [B, U, h, w], but got [5, 4, 4].",
    ),
    (
        lambda m, a, k: m.update(a.long(), k),
        TypeError,
        "Expected argument `activations` to be a float tensor, but got torch.int64.",
    ),
    (
        lambda m, a, k: m.update(a, k.float()),
        TypeError,
        "Expected argument `masks` to be a bool tensor, but got torch.float32.",
    ),
    (
        lambda m, a, k: m.update(a, k[:1]),
        ValueError,
        "Expected `activations` and `masks` with the same batch size, but got 2 and 1.",
    ),
    (
        lambda m, a, k: m.update(a[:, :4], k),
        ValueError,
        "Expected `activations` with 5 units, but got 4.",
    ),
    (
        lambda m, a, k: m.update(a, k[:, :2]),
        ValueError,
        "Expected `masks` with 3 concepts, but got 2.",
    ),
    (
        lambda m, a, k: m.update(a[:0], k[:0]),
        ValueError,
        "Expected a non-empty batch, but `activations` has 0 samples.",
    ),
    (
        lambda m, a, k: m.update(a, k.tolist()),
        TypeError,
        "Expected argument `masks` to be a tensor, but got list.",
    ),
    (
        lambda m, a, k: m.compute(),
        ValueError,
        "Expected at least one sample, but `UnitConceptIoU` has seen none",
    ),
]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
@pytest.mark.parametrize(("call", "error", "message"), BAD_BATCHES)
def test_bad_batches_get_one_clear_error(call, error, message):
    metric = UnitConceptIoU(5, 3, **SMALL)
    acts, masks = _good()
    with pytest.raises(error, match=re.escape(message)):
        call(metric, acts, masks)


def test_masks_of_another_size_than_the_first_batch_are_refused():
    metric = UnitConceptIoU(5, 3, **SMALL, calibration_samples=1)
    acts, masks = _good()
    metric.update(acts, masks)
    with pytest.raises(ValueError, match=r"Expected `masks` of size \(8, 8\), but got \(4, 4\)."):
        metric.update(acts, masks[..., :4, :4])


BAD_ARGUMENTS = [
    ({"quantile": 1.5}, "Expected argument `quantile` to be a float in (0, 1), but got 1.5."),
    ({"num_units": 0}, "Expected argument `num_units` to be an int >= 1, but got 0."),
    ({"num_concepts": 2.0}, "Expected argument `num_concepts` to be an int >= 1, but got 2.0."),
    ({"num_levels": 0}, "Expected argument `num_levels` to be an int >= 1, but got 0."),
    (
        {"min_fraction": 1.0},
        "Expected argument `min_fraction` to be a float in (0, 1), but got 1.0.",
    ),
    (
        {"num_dense_levels": -1},
        "Expected argument `num_dense_levels` to be an int >= 0, but got -1.",
    ),
    (
        {"min_concept_fraction": 2},
        "Expected argument `min_concept_fraction` to be a float in [0, 1], but got 2.",
    ),
    (
        {"calibration_samples": 0},
        "Expected argument `calibration_samples` to be an int >= 1, but got 0.",
    ),
    ({"segmentation_size": (8,)}, "Expected argument `segmentation_size` to be None or a pair"),
    ({"levels": torch.zeros(4, 3)}, "Expected argument `levels` of shape [5, L], but got [4, 3]."),
    (
        {"levels": torch.tensor([[1.0, 0.0]] * 5)},
        "Expected argument `levels` to be sorted ascending",
    ),
    ({"dist_sync_on_step": True}, "Expected `dist_sync_on_step=False`"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS)
def test_bad_arguments_get_one_clear_error(kwargs, message):
    arguments = {"num_units": 5, "num_concepts": 3, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        UnitConceptIoU(**arguments)


def test_compute_in_blocks_of_units_gives_the_same_result(monkeypatch):
    from gan_dissect_callbacks.functional import unit_concept

    batches = _batches(13, 2)
    metric = _fed(batches, calibration_samples=1)
    whole = metric.compute()
    monkeypatch.setattr(unit_concept, "_COMPUTE_TABLES", 7)  # one unit per block
    counts = metric._counts()
    _assert_same_result(unit_concept.unit_concept_compute(counts, metric.levels), whole)


def test_an_autocast_region_around_the_update_does_not_change_the_counts():
    # Counts far above 256, where half-precision matmuls would no longer be exact.
    acts, masks = random_dissection_data(4, 64, 5, 3, (8, 8), (64, 64), "relu")

    def fed() -> UnitConceptIoU:
        metric = UnitConceptIoU(5, 3, **SMALL, calibration_samples=32)
        for i in range(0, 64, 32):
            metric.update(acts[i : i + 32], masks[i : i + 32])
        return metric

    plain = fed().compute()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fed().compute()
    _assert_same_result(inside, plain)


@pytest.fixture
def reduced_matmul_precision():
    """``torch.set_float32_matmul_precision("medium")``, as many training scripts set it."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    yield
    torch.set_float32_matmul_precision(saved)  # also the per-backend settings it set


def test_a_reduced_float32_matmul_precision_does_not_change_the_counts(reduced_matmul_precision):
    from gan_dissect_callbacks.functional import unit_concept

    # TF32 on CUDA and bfloat16 on oneDNN CPUs would round counts above 2048 and 256 (on a CPU
    # without native bfloat16 the product stays float32 anyway): counting detects the setting.
    assert not unit_concept._exact_float32_matmul(torch.device("cpu"))
    assert not unit_concept._exact_float32_matmul(torch.device("cuda"))
    acts, masks = random_dissection_data(4, 64, 5, 3, (8, 8), (64, 64), "relu")
    levels = unit_concept_levels(acts[:32], (64, 64), num_levels=6, num_dense_levels=3)
    counts = unit_concept_update(acts, masks, levels, counting="combinations")
    brute = brute_force_counts(acts, masks, levels)
    assert int(brute["unit_above"].max()) > 2048
    assert torch.equal(counts_above(counts.unit_bins, dim=1), brute["unit_above"])
    assert torch.equal(counts_above(counts.joint_bins, dim=1), brute["joint_above"])
    torch.set_float32_matmul_precision("highest")
    assert unit_concept._exact_float32_matmul(torch.device("cpu"))
    assert unit_concept._exact_float32_matmul(torch.device("cuda"))


def _many_concepts(seed, concepts):
    """Masks of up to several 64-bit code words of concepts, many of them on together."""
    acts, masks = random_dissection_data(seed, 3, 5, concepts, (3, 3), (6, 6), "relu")
    g = torch.Generator().manual_seed(seed)
    masks |= torch.rand(masks.shape, generator=g) < 0.3
    if concepts > 64:
        masks[:, 64] = masks[:, 0]  # a concept of the second word tied to one of the first
    masks[:, concepts - 1] |= masks[:, 1]  # the top bit of the last word, often set
    return acts, masks


@pytest.mark.parametrize("concepts", [63, 64, 65, 130])
@pytest.mark.parametrize("counting", ["combinations", "pairs"])
def test_many_concepts_are_counted_exactly(concepts, counting):
    acts, masks = _many_concepts(concepts, concepts)
    levels = unit_concept_levels(acts, (6, 6), num_levels=6, num_dense_levels=3)
    counts = unit_concept_update(acts, masks, levels, counting=counting)
    brute = brute_force_counts(acts, masks, levels)
    assert torch.equal(counts_above(counts.unit_bins, dim=1), brute["unit_above"])
    assert torch.equal(counts_above(counts.joint_bins, dim=1), brute["joint_above"])


def test_label_combinations_survive_a_hash_collision(monkeypatch):
    from gan_dissect_callbacks.functional import unit_concept

    masks = _many_concepts(1, 130)[1]
    pixels = masks.permute(0, 2, 3, 1).reshape(-1, 130)
    inverse, combinations = unit_concept._label_combinations(masks)
    # Every pixel hashing alike forces the row-wise fallback; the combinations stay exact.
    monkeypatch.setattr(unit_concept, "_hash_rows", lambda codes: torch.zeros(len(codes)).long())
    collided, collided_combinations = unit_concept._label_combinations(masks)
    for inv, comb in ((inverse, combinations), (collided, collided_combinations)):
        assert torch.equal(comb[inv], pixels)
        assert len({tuple(row) for row in comb.tolist()}) == comb.shape[0]  # distinct rows
    assert combinations.shape == collided_combinations.shape


def test_counts_accumulate_in_place_into_out():
    from gan_dissect_callbacks.functional import unit_concept

    acts, masks = random_dissection_data(3, 6, 34, 3, (3, 3), (6, 6), "none")
    levels = unit_concept_levels(acts, (6, 6), **SMALL)
    bins = unit_concept._level_bins(levels)
    out = unit_concept._empty_counts(34, levels.shape[1], 3, acts.device)
    joint = out.joint_bins
    for start in (0, 2, 5):
        stop = {0: 2, 2: 5, 5: 6}[start]
        returned = unit_concept._unit_concept_update(
            acts[start:stop], masks[start:stop], bins, out=out
        )
        assert returned is out
    whole = unit_concept_update(acts, masks, levels)
    assert out.joint_bins is joint  # added into, never replaced
    for name in ("unit_bins", "joint_bins", "concept_pixels", "num_pixels", "num_samples"):
        assert torch.equal(getattr(out, name), getattr(whole, name)), name


@pytest.mark.parametrize("counting", ["combinations", "pairs"])
def test_a_small_bincount_buffer_gives_the_same_counts(monkeypatch, counting):
    from gan_dissect_callbacks.functional import unit_concept

    monkeypatch.setenv("GAN_DISSECT_NUMBA", "0")  # the buffer is the PyTorch path's
    acts, masks = random_dissection_data(4, 5, 34, 4, (4, 4), (8, 8), "round")
    levels = unit_concept_levels(acts, (8, 8), **SMALL)
    expected = unit_concept_update(acts, masks, levels, counting=counting)
    monkeypatch.setattr(unit_concept, "_BINCOUNT_VALUES", 50)  # flushes within every chunk
    monkeypatch.setattr(unit_concept, "_CHUNK_VALUES", 2**10)
    counts = unit_concept_update(acts, masks, levels, counting=counting)
    assert torch.equal(counts.unit_bins, expected.unit_bins)
    assert torch.equal(counts.joint_bins, expected.joint_bins)
    assert torch.equal(unit_concept_levels(acts, (8, 8), **SMALL), levels)


def test_counts_without_concepts_equal_the_unit_counts_with_them():
    from gan_dissect_callbacks.functional import unit_concept

    acts, masks = random_dissection_data(5, 4, 34, 3, (3, 3), (6, 6), "relu")
    levels = unit_concept_levels(acts, (6, 6), **SMALL)
    bins = unit_concept._level_bins(levels)
    alone = unit_concept._unit_concept_update(acts, masks[:, :0], bins)
    assert torch.equal(alone.unit_bins, unit_concept_update(acts, masks, levels).unit_bins)
    assert alone.joint_bins.shape == (34, levels.shape[1] + 1, 0)


def _two_passes(acts, masks, **sizes):
    """What calibrating in one pass must give: the levels, then a count at them."""
    levels = unit_concept_levels(acts, tuple(masks.shape[2:]), **sizes)
    return levels, unit_concept_update(acts, masks, levels)


def _one_pass(acts, masks, counting="auto", out=None, num_levels=100, num_dense_levels=256):
    from gan_dissect_callbacks.functional import unit_concept

    return unit_concept._calibrated_update(
        acts, masks, quantile=0.99, num_levels=num_levels, min_fraction=1e-3,
        num_dense_levels=num_dense_levels, counting=counting, out=out,
    )  # fmt: skip


@pytest.mark.parametrize("numba", ["1", "0"])
@pytest.mark.parametrize("counting", ["combinations", "pairs", "auto"])
@pytest.mark.parametrize(
    ("units", "concepts", "sizes"),
    [(34, 4, {}), (70, 3, SMALL), (33, 70, {}), (5, 0, SMALL), (3, 2, {"num_dense_levels": 0})],
)
def test_calibrating_and_counting_in_one_pass_equals_two_passes(
    monkeypatch, numba, counting, units, concepts, sizes
):
    monkeypatch.setenv("GAN_DISSECT_NUMBA", numba)
    acts, masks = random_dissection_data(7, 6, units, concepts, (4, 4), (12, 12), "relu")
    levels, counts = _two_passes(acts, masks, **sizes)
    got_levels, got = _one_pass(acts, masks, counting, **sizes)
    assert torch.equal(got_levels, levels)
    for field in dataclasses.fields(counts):
        assert torch.equal(getattr(got, field.name), getattr(counts, field.name)), field.name
    brute = brute_force_counts(acts, masks if concepts else masks[:, :0].any(1, True), levels)
    assert torch.equal(counts_above(got.unit_bins, dim=1), brute["unit_above"])
    if concepts:
        assert torch.equal(counts_above(got.joint_bins, dim=1), brute["joint_above"])


def test_one_pass_calibration_adds_into_out():
    from gan_dissect_callbacks.functional import unit_concept

    acts, masks = random_dissection_data(8, 6, 34, 3, (3, 3), (6, 6), "none")
    levels, counts = _two_passes(acts, masks, **SMALL)
    out = unit_concept_update(acts[:2], masks[:2], levels)  # counts already held
    joint = out.joint_bins
    returned_levels, returned = _one_pass(acts, masks, out=out, **SMALL)
    assert returned is out and out.joint_bins is joint
    assert torch.equal(returned_levels, levels)
    expected = counts + unit_concept._unit_concept_update(
        acts[:2], masks[:2], unit_concept._level_bins(levels)
    )
    for field in dataclasses.fields(out):
        assert torch.equal(getattr(out, field.name), getattr(expected, field.name)), field.name


@pytest.mark.parametrize("counting", ["combinations", "pairs"])
def test_a_block_whose_levels_are_not_candidates_is_counted_again(monkeypatch, counting):
    from gan_dissect_callbacks.functional import unit_concept

    chosen = unit_concept._Candidates.levels

    def coarse(self, unit_bins):  # final levels on a coarser grid than the candidates'
        return snap_levels(chosen(self, unit_bins), num_cells=7)

    monkeypatch.setattr(unit_concept._Candidates, "levels", coarse)
    passes = []
    count = unit_concept._unit_concept_update
    monkeypatch.setattr(
        unit_concept, "_unit_concept_update", lambda *a, **k: passes.append(1) or count(*a, **k)
    )
    acts, masks = random_dissection_data(9, 6, 40, 4, (4, 4), (12, 12), "none")
    levels, counts = _two_passes(acts, masks, **SMALL)
    passes.clear()
    got_levels, got = _one_pass(acts, masks, counting, **SMALL)
    assert len(passes) == 3  # the pass at the candidates, then each of the 2 blocks again
    assert torch.equal(got_levels, levels)
    for field in dataclasses.fields(counts):
        assert torch.equal(getattr(got, field.name), getattr(counts, field.name)), field.name


def test_a_calibration_that_fails_leaves_no_counts_behind(monkeypatch):
    from gan_dissect_callbacks.functional import unit_concept

    acts, masks = random_dissection_data(10, 6, 40, 3, (4, 4), (8, 8), "none")
    chosen = unit_concept._Candidates.levels
    calls = []

    def fails_in_the_second_block(self, unit_bins):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory")
        return chosen(self, unit_bins)

    monkeypatch.setattr(unit_concept._Candidates, "levels", fails_in_the_second_block)
    monkeypatch.setattr(unit_concept, "_ONE_PASS_BINS", float("inf"))  # one pass on few pixels
    metric = UnitConceptIoU(40, 3, calibration_samples=6, **SMALL)
    with pytest.raises(MemoryError):
        metric.update(acts, masks)
    assert len(calls) == 2  # the first block's counts were added before the failure
    assert not metric.calibrated
    assert int(metric.unit_bins.abs().sum()) == 0 and int(metric.joint_bins.abs().sum()) == 0
    monkeypatch.setattr(unit_concept._Candidates, "levels", chosen)
    fresh = UnitConceptIoU(40, 3, calibration_samples=6, **SMALL)
    fresh.update(acts, masks)
    metric.reset()
    metric.update(acts, masks)
    assert torch.equal(metric.joint_bins, fresh.joint_bins)
    assert torch.equal(metric.levels, fresh.levels)


@pytest.mark.parametrize(("share", "passes"), [(float("inf"), 1), (0.0, 2)])
def test_auto_counts_in_one_pass_only_where_the_candidate_bins_are_few(monkeypatch, share, passes):
    from gan_dissect_callbacks.functional import unit_concept

    acts, masks = random_dissection_data(11, 6, 34, 3, (4, 4), (12, 12), "relu")
    levels, counts = _two_passes(acts, masks, **SMALL)
    monkeypatch.setattr(unit_concept, "_ONE_PASS_BINS", share)
    calls = []
    count = unit_concept._unit_concept_update
    monkeypatch.setattr(
        unit_concept, "_unit_concept_update", lambda *a, **k: calls.append(1) or count(*a, **k)
    )
    got_levels, got = _one_pass(acts, masks, "auto", **SMALL)
    assert len(calls) == passes
    assert torch.equal(got_levels, levels)
    for field in dataclasses.fields(counts):
        assert torch.equal(getattr(got, field.name), getattr(counts, field.name)), field.name
