"""Intervention engine: ACE, removal curves, insertion and the α optimisation.

The synthetic ``Painter`` makes every answer computable by hand: its layer ``features`` is the
latent reshaped to ``[6, 4, 4]`` and each image pixel block (2×2) depends only on the featuremap
pixel below it. Units 0 and 1 paint red, unit 2 green, unit 5 blue; units 3 and 4 paint nothing.
Brute-force references edit the featuremap sample by sample and location by location in Python
loops and paint it again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.engines.intervention import (
    ACEResult,
    AlphaStep,
    RemovalCurve,
    average_causal_effect,
    concept_weighted_mean,
    insertion_effect,
    insertion_values,
    intervention_images,
    iou_ranking,
    iou_scores,
    optimize_alpha,
    patch_locations,
    removal_curve,
)
from gan_dissect_callbacks.engines.sampling import iterate_samples, resolve_latent_sampler
from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

U, H, W = 6, 4, 4
VOCAB = ConceptVocabulary.from_pairs(
    [("red", "color"), ("green", "color"), ("blue", "color"), ("never", "color")]
)
RED, GREEN = 0, 1


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convolutions run far faster on one thread than on two busy shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def paint(r: Tensor, gain: Tensor | float = 1.0) -> Tensor:
    """Featuremap ``[B, 6, 4, 4]`` → image ``[B, 3, 8, 8]``; a colour shows where its units fire."""
    act = F.relu(r)
    channels = torch.stack([act[:, 0] + act[:, 1], act[:, 2], act[:, 5]], 1)
    return F.interpolate(torch.tanh(gain * (2 * channels - 1)), scale_factor=2.0, mode="nearest")


class Painter(nn.Module):
    latent_dim = U * H * W

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Unflatten(1, (U, H, W))
        self.norm = nn.BatchNorm2d(U)  # its statistics must stay untouched
        self.gain = nn.Parameter(torch.ones(()))  # must collect no .grad

    def forward(self, z: Tensor) -> Tensor:
        r = self.features(z)
        _ = self.norm(r)
        return paint(r, self.gain)


def segmenter() -> GroundTruthSegmenter:
    def hard(images: Tensor) -> Tensor:
        never = torch.zeros_like(images[:, :1], dtype=torch.bool)
        return torch.cat([images > 0, never], 1)

    def soft(images: Tensor) -> Tensor:
        return torch.cat([torch.sigmoid(8 * images), torch.zeros_like(images[:, :1])], 1)

    return GroundTruthSegmenter(VOCAB, hard, soft)


def all_latents(model: nn.Module, num_samples: int, batch_size: int, seed: int) -> Tensor:
    sampler = resolve_latent_sampler(model)
    batches = iterate_samples(sampler, num_samples, batch_size, seed=seed)
    return torch.cat([b.latents for b in batches])


def featuremap(z: Tensor) -> Tensor:
    return z.view(U, H, W).clone()


def upsample_region(p: Tensor) -> Tensor:
    return p.repeat_interleave(2, 0).repeat_interleave(2, 1)


def concept_mask(r: Tensor, concept: int) -> Tensor:
    return segmenter().segment(paint(r[None]))[0, concept]


# ---------------------------------------------------------------------------- references


def brute_removal(z: Tensor, order: list[int], concept: int) -> list[float]:
    before, kept = 0, [0] * len(order)
    for i in range(z.shape[0]):
        original = concept_mask(featuremap(z[i]), concept)
        before += int(original.sum())
        for n in range(1, len(order) + 1):
            r = featuremap(z[i])
            for u in order[:n]:
                r[u] = 0.0
            kept[n - 1] += int((concept_mask(r, concept) & original).sum())
    return [1 - kept_n / before for kept_n in kept]


def brute_ace(
    z: Tensor, units: list[int], k: list[float], places: Tensor, concept: int
) -> tuple[float, float]:
    inserted, ablated, pairs = 0.0, 0.0, 0
    for i in range(z.shape[0]):
        for p in places:
            region = upsample_region(p)
            r_i, r_a = featuremap(z[i]), featuremap(z[i])
            for u, value in zip(units, k):
                r_i[u][p] = value
                r_a[u][p] = 0.0
            inserted += concept_mask(r_i, concept)[region].float().mean().item()
            ablated += concept_mask(r_a, concept)[region].float().mean().item()
            pairs += 1
    return inserted / pairs, ablated / pairs


def brute_k(z: Tensor, concept: int) -> Tensor:
    sums, weight = torch.zeros(U, dtype=torch.float64), 0.0
    for i in range(z.shape[0]):
        r = featuremap(z[i]).double()
        m = concept_mask(featuremap(z[i]), concept).double()
        pooled = m.view(H, 2, W, 2).mean((1, 3))
        sums += (r * pooled).sum((1, 2))
        weight += pooled.sum().item()
    return sums / weight


# ---------------------------------------------------------------------------- pure math


def test_concept_weighted_mean_pools_the_mask_to_the_featuremap() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, U, H, W, generator=g)
    masks = torch.rand(3, 8, 8, generator=g) > 0.6
    expected = torch.zeros(U, dtype=torch.float64)
    weight = 0.0
    for i in range(3):
        for y in range(8):
            for x in range(8):
                if masks[i, y, x]:
                    expected += r[i, :, y // 2, x // 2].double() / 4
                    weight += 1 / 4
    assert torch.allclose(concept_weighted_mean(r, masks), expected / weight, atol=1e-12)


def test_patch_locations_tile_the_featuremap() -> None:
    patches = patch_locations((4, 6), 2)
    assert patches.shape == (6, 4, 6)
    assert torch.equal(patches.sum(0), torch.ones(4, 6, dtype=torch.long))
    assert patch_locations((4, 4), 2, stride=1).shape[0] == 9
    with pytest.raises(ValueError, match=r"`patch_size` to be an int in \[1, 4\]"):
        patch_locations((4, 4), 5)


# ---------------------------------------------------------------------------- k


def test_insertion_values_concept_mean_matches_brute_force() -> None:
    model = Painter()
    k = insertion_values(model, "features", segmenter(), "red", num_samples=10, batch_size=4)
    expected = brute_k(all_latents(model, 10, 4, seed=0), RED)
    assert torch.allclose(k.double(), expected, atol=1e-6)
    assert k[0] > 0.3 and k[1] > 0.3  # red units fire where red is


def test_insertion_values_quantile_rule() -> None:
    model = Painter()
    k = insertion_values(
        model, "features", segmenter(), "red", rule="quantile", quantile=0.9, num_samples=7
    )
    r = all_latents(model, 7, 32, seed=0).view(7, U, H * W)
    expected = torch.quantile(r.transpose(0, 1).reshape(U, -1), 0.9, dim=1)
    assert torch.allclose(k, expected, atol=1e-6)


# ---------------------------------------------------------------------------- removal


def test_removal_curve_matches_brute_force_and_its_random_draws() -> None:
    model = Painter()
    curve = removal_curve(
        model, "features", segmenter(), "red", [0, 1, 3], num_random=2, num_samples=9,
        batch_size=4, seed=3,
    )  # fmt: skip
    z = all_latents(model, 9, 4, seed=3)
    assert curve.units == [0, 1, 3]
    assert curve.removed == pytest.approx(brute_removal(z, [0, 1, 3], RED), abs=1e-12)
    assert curve.removed[1] == 1.0 and curve.removed[2] == 1.0  # both red units gone: no red
    assert 0 < curve.removed[0] < 1
    assert len(curve.random_units) == 2
    for units, removed in zip(curve.random_units, curve.random_removed):
        assert len(set(units)) == 3 and all(0 <= u < U for u in units)
        assert removed == pytest.approx(brute_removal(z, units, RED), abs=1e-12)
    again = removal_curve(
        model, "features", segmenter(), "red", [0, 1, 3], num_random=2, num_samples=9, seed=3
    )
    assert again.random_units == curve.random_units  # seeded
    assert again.removed == curve.removed  # whatever the batch size
    other = removal_curve(
        model, "features", segmenter(), "red", [0, 1, 3], num_random=2, num_samples=9, seed=4
    )
    assert other.random_units != curve.random_units


def test_removal_curve_distractors_remove_nothing() -> None:
    curve = removal_curve(Painter(), "features", segmenter(), "red", [3, 4, 2], num_random=0)
    assert curve.removed == [0.0, 0.0, 0.0]
    assert curve.net_removed == [0.0, 0.0, 0.0]
    assert curve.random_mean == []


@settings(max_examples=10, deadline=None)
@given(
    num_samples=st.integers(1, 8),
    batch_size=st.integers(1, 5),
    seed=st.integers(0, 10_000),
    order=st.permutations(list(range(U))),
)
def test_removal_curve_streaming_equals_brute_force(
    num_samples: int, batch_size: int, seed: int, order: list[int]
) -> None:
    model = Painter()
    z = all_latents(model, num_samples, batch_size, seed)
    if not any(concept_mask(featuremap(zi), RED).any() for zi in z):
        return  # the concept-absent error has its own test
    curve = removal_curve(
        model, "features", segmenter(), "red", order[:3], num_random=0,
        num_samples=num_samples, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    assert curve.removed == pytest.approx(brute_removal(z, order[:3], RED), abs=1e-12)


# ---------------------------------------------------------------------------- ACE


def test_ace_matches_brute_force_at_patches() -> None:
    model = Painter()
    places = patch_locations((H, W), 2)
    result = average_causal_effect(
        model, "features", segmenter(), "red", [0, 1], values=[0.8, 0.6], locations=places,
        num_samples=6, batch_size=5,
    )  # fmt: skip
    z = all_latents(model, 6, 5, seed=0)
    inserted, ablated = brute_ace(z, [0, 1], [0.8, 0.6], places, RED)
    assert result.inserted == pytest.approx(inserted, abs=1e-9)
    assert result.ablated == pytest.approx(ablated, abs=1e-9)
    assert result.ace == pytest.approx(inserted - ablated, abs=1e-9)
    assert result.inserted == 1.0 and result.ablated == 0.0  # 2·(0.8 + 0.6) − 1 > 0 everywhere
    assert result.num_locations == 4 and result.units == [0, 1]


def test_ace_of_distractors_is_zero_and_of_a_single_unit_is_partial() -> None:
    model, seg = Painter(), segmenter()
    assert average_causal_effect(model, "features", seg, "red", [3, 4], values=5.0).ace == 0.0
    single = average_causal_effect(model, "features", seg, "red", [0], num_samples=32)
    assert 0.0 < single.ace < 1.0
    z = all_latents(model, 32, 32, seed=0)
    k0 = insertion_values(model, "features", seg, "red", num_samples=32)[0].item()
    whole = torch.ones(1, H, W, dtype=torch.bool)
    inserted, ablated = brute_ace(z, [0], [k0], whole, RED)
    assert single.ace == pytest.approx(inserted - ablated, abs=1e-6)
    assert single.values == pytest.approx([k0], abs=1e-6)


def test_ace_soft_and_whole_image_measure() -> None:
    model = Painter()
    corner = torch.zeros(H, W, dtype=torch.bool)
    corner[0, 0] = True
    result = average_causal_effect(
        model, "features", segmenter(), "green", [2], values=[3.0], locations=corner,
        measure="image", soft=True, num_samples=4,
    )  # fmt: skip
    z = all_latents(model, 4, 32, seed=0)
    expected_i, expected_a = 0.0, 0.0
    for zi in z:
        r_i, r_a = featuremap(zi), featuremap(zi)
        r_i[2][0, 0], r_a[2][0, 0] = 3.0, 0.0
        expected_i += torch.sigmoid(8 * paint(r_i[None]))[0, 1].mean().item() / 4
        expected_a += torch.sigmoid(8 * paint(r_a[None]))[0, 1].mean().item() / 4
    assert result.inserted == pytest.approx(expected_i, abs=1e-6)
    assert result.ablated == pytest.approx(expected_a, abs=1e-6)
    assert isinstance(result, ACEResult) and result.to_dict()["measure"] == "image"


# ---------------------------------------------------------------------------- insertion


def test_insertion_is_measured_where_it_was_made() -> None:
    """Insert red in the top-right patch: it appears there, in full, and nowhere else."""
    model, seg = Painter(), segmenter()
    top_right = torch.zeros(H, W, dtype=torch.bool)
    top_right[0, 2:] = True  # asymmetric: a transposed or flipped region would miss it
    result = insertion_effect(
        model, "features", seg, "red", [0], values=[10.0], locations=top_right,
        num_random=0, num_samples=16,
    )  # fmt: skip
    z = all_latents(model, 16, 32, seed=0)
    region = upsample_region(top_right)
    eligible = [zi for zi in z if not concept_mask(featuremap(zi), RED)[region].any()]
    assert result.num_pairs == len(eligible) > 0
    assert result.num_candidates == 16
    assert result.fraction_gained == 1.0
    assert result.pixels_gained == float(region.sum())
    assert result.fraction_before == 0.0

    images = intervention_images(
        model, "features", [0], [10.0], insert_where=top_right, num_images=16
    )
    before = seg.segment(images["original"])[:, RED]
    after = seg.segment(images["inserted"])[:, RED]
    assert after[:, region].all()
    assert torch.equal(after[:, ~region], before[:, ~region])


def test_insertion_effect_matches_brute_force_with_random_baseline() -> None:
    model, seg = Painter(), segmenter()
    places = patch_locations((H, W), 2)
    result = insertion_effect(
        model, "features", seg, "red", [0, 1], locations=places, absent_fraction=0.25,
        num_random=2, num_samples=8, batch_size=3, seed=1,
    )  # fmt: skip
    z = all_latents(model, 8, 3, seed=1)

    def brute(units: list[int], k: list[float]) -> tuple[float, int]:
        gained, pairs = 0.0, 0
        for zi in z:
            for p in places:
                region = upsample_region(p)
                before = concept_mask(featuremap(zi), RED)[region]
                if before.float().mean() > 0.25:
                    continue
                r = featuremap(zi)
                for u, value in zip(units, k):
                    r[u][p] = value
                after = concept_mask(r, RED)[region]
                gained += (after.sum() - before.sum()).item() / region.sum().item()
                pairs += 1
        return gained / pairs, pairs

    fraction, pairs = brute([0, 1], result.values)
    assert result.num_pairs == pairs and result.num_candidates == 8 * 4
    assert result.fraction_gained == pytest.approx(fraction, abs=1e-9)
    k_all = insertion_values(model, "features", seg, "red", num_samples=8, batch_size=3, seed=1)
    for units, gained in zip(result.random_units, result.random_fraction_gained):
        assert gained == pytest.approx(brute(units, k_all[units].tolist())[0], abs=1e-6)
    assert result.fraction_gained > 0.5


# ---------------------------------------------------------------------------- α


def test_optimize_alpha_ranks_the_causal_units_first() -> None:
    model, seg = Painter(), segmenter()
    misleading = [0.1, 0.1, 0.6, 1.0, 0.9, 0.5]  # an IoU ranking that favours the distractors
    steps: list[AlphaStep] = []
    result = optimize_alpha(
        model, "features", seg, "red", init=misleading, locations=patch_locations((H, W), 2),
        steps=150, batch_size=8, seed=0, progress=lambda record, total: steps.append(record),
    )  # fmt: skip
    assert set(result.ranking[:2]) == {0, 1}
    assert min(result.alpha[0], result.alpha[1]) > 0.9
    assert max(result.alpha[2:]) < 0.1
    assert result.init == pytest.approx([s / 1.0 for s in misleading])
    assert [s.step for s in steps] == list(range(1, 151))
    assert steps[-1].ace > steps[0].ace
    assert all(0.0 <= a <= 1.0 for a in result.alpha)
    assert model.gain.grad is None  # gradients were taken with respect to α only
    again = optimize_alpha(
        model, "features", seg, "red", init=misleading, locations=patch_locations((H, W), 2),
        steps=150, batch_size=8, seed=0,
    )  # fmt: skip
    assert again.alpha == result.alpha  # seeded


def test_alpha_ranking_removes_at_least_as_much_as_the_iou_ranking() -> None:
    model, seg = Painter(), segmenter()
    misleading = [0.1, 0.1, 0.6, 1.0, 0.9, 0.5]
    alpha = optimize_alpha(model, "features", seg, "red", init=misleading, steps=150, batch_size=8)
    iou_order = sorted(range(U), key=lambda u: -misleading[u])
    by_alpha = removal_curve(model, "features", seg, "red", alpha.ranking, max_units=3)
    by_iou = removal_curve(model, "features", seg, "red", iou_order, max_units=3)
    assert by_alpha.removed[1] == 1.0
    assert all(a >= b for a, b in zip(by_alpha.removed, by_iou.removed))


# ---------------------------------------------------------------------------- harmless


def test_interventions_leave_model_rng_and_hooks_untouched() -> None:
    model, seg = Painter(), segmenter()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    removal_curve(model, "features", seg, "red", [0, 1], num_samples=4)
    average_causal_effect(model, "features", seg, "red", [0], num_samples=4)
    insertion_effect(model, "features", seg, "red", [0], num_samples=4)
    optimize_alpha(model, "features", seg, "red", steps=2, batch_size=2)
    intervention_images(model, "features", [0], 1.0, num_images=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and model.norm.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


# ---------------------------------------------------------------------------- bad input


def test_unknown_concept_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown concept 'sky'\. Known concepts: red, green"):
        removal_curve(Painter(), "features", segmenter(), "sky", [0])


def test_unit_indices_out_of_range_or_repeated() -> None:
    model, seg = Painter(), segmenter()
    with pytest.raises(ValueError, match=r"`ranking` to hold unit indices in \[0, 6\).*\[6, -1\]"):
        removal_curve(model, "features", seg, "red", [0, 6, -1])
    with pytest.raises(ValueError, match=r"`units` to list each unit once.*\[1\]"):
        average_causal_effect(model, "features", seg, "red", [1, 1], values=1.0)
    with pytest.raises(ValueError, match=r"`units` to be a non-empty flat list"):
        insertion_effect(model, "features", seg, "red", [], values=1.0)
    with pytest.raises(ValueError, match=r"one value per listed unit \(2\), but got shape \[3\]"):
        average_causal_effect(model, "features", seg, "red", [0, 1], values=[1.0, 2.0, 3.0])


def test_empty_location_is_rejected() -> None:
    places = patch_locations((H, W), 2)
    places[2] = False
    with pytest.raises(ValueError, match=r"at least one pixel in every location P.*\[2\]"):
        average_causal_effect(Painter(), "features", segmenter(), "red", [0], locations=places)
    with pytest.raises(ValueError, match=r"featuremap resolution \(4x4\), but got \[8, 8\]"):
        insertion_effect(Painter(), "features", segmenter(), "red", [0], locations=torch.ones(8, 8))


def test_concept_absent_from_all_samples() -> None:
    model, seg = Painter(), segmenter()
    with pytest.raises(ValueError, match=r"Concept 'never' is absent from all 5 samples"):
        removal_curve(model, "features", seg, "never", [0, 1], num_samples=5)
    with pytest.raises(ValueError, match=r"Concept 'never' is absent from all 5 samples"):
        insertion_values(model, "features", seg, "never", num_samples=5)
    with pytest.raises(ValueError, match=r"Concept 'never' is absent from all 5 samples"):
        average_causal_effect(model, "features", seg, "never", [0], num_samples=5)


def test_nowhere_to_insert() -> None:
    with pytest.raises(ValueError, match=r"nowhere to insert it"):
        insertion_effect(
            Painter(), "features", segmenter(), "red", [0], values=1.0,
            locations=torch.ones(H, W), absent_fraction=0.0, num_random=0, num_samples=64,
        )  # fmt: skip


def test_unknown_layer_and_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match=r"Unknown layer 'feature'.*'features'"):
        removal_curve(Painter(), "feature", segmenter(), "red", [0])
    with pytest.raises(ValueError, match=r"`max_units` to be an int ≥ 1, but got 0"):
        removal_curve(Painter(), "features", segmenter(), "red", [0], max_units=0)
    with pytest.raises(ValueError, match=r"`init` to hold one score per unit \(6\)"):
        optimize_alpha(Painter(), "features", segmenter(), "red", init=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"`measure` to be one of"):
        average_causal_effect(Painter(), "features", segmenter(), "red", [0], measure="pixel")  # type: ignore[arg-type]


def test_iou_ranking_from_a_report_like_object() -> None:
    from types import SimpleNamespace

    layer = SimpleNamespace(iou=[[0.1, 0.2], [float("nan"), 0.4], [0.3, 0.0]])
    report = SimpleNamespace(vocabulary=VOCAB, layers={"features": layer})
    assert iou_scores(report, "features", "red") == [0.1, 0.0, 0.3]  # type: ignore[arg-type]
    assert iou_ranking(report, "features", "green") == [1, 0, 2]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"a layer of the dissection report \(features\)"):
        iou_ranking(report, "layer2", "red")  # type: ignore[arg-type]


def test_results_are_json_friendly() -> None:
    import json

    curve = removal_curve(Painter(), "features", segmenter(), "red", [0, 1], num_samples=4)
    assert isinstance(curve, RemovalCurve)
    data = json.loads(json.dumps(curve.to_dict()))
    assert data["removed"] == curve.removed and len(data["random_mean"]) == 2
    alpha = optimize_alpha(Painter(), "features", segmenter(), "red", steps=2, batch_size=2)
    assert json.loads(json.dumps(alpha.to_dict()))["history"][0]["step"] == 1


# ---------------------------------------------------------------------------- the generator


def test_an_analysed_generator_gives_the_numbers_of_its_module() -> None:
    model, seg = Painter(), segmenter()
    wrapped = AnalysedGenerator(model)
    assert removal_curve(wrapped, "features", seg, "red", [0, 1, 3], num_samples=9) == (
        removal_curve(model, "features", seg, "red", [0, 1, 3], num_samples=9)
    )


def test_generate_and_latents_from_the_analysed_generator() -> None:
    """A holder whose images come from one submodule: layer names are the holder's."""
    holder = nn.Module()
    holder.painter = Painter()
    holder.critic = nn.Conv2d(3, 1, 1)
    g = AnalysedGenerator(
        holder,
        generate=holder.painter,
        sample_latents=lambda n, generator: torch.randn(n, U * H * W, generator=generator),
    )
    curve = removal_curve(
        g, "painter.features", segmenter(), "red", [0, 1, 3], num_random=0, num_samples=9,
        batch_size=4, seed=3,
    )  # fmt: skip
    z = all_latents(Painter(), 9, 4, seed=3)  # the same standard-normal stream
    assert curve.removed == pytest.approx(brute_removal(z, [0, 1, 3], RED), abs=1e-12)
    images = intervention_images(g, "painter.features", [0], 10.0, num_images=3)
    assert images["inserted"].shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"'critic' of Module did not run while generating"):
        removal_curve(g, "critic", segmenter(), "red", [0])


# ---------------------------------------------------------------------------- distributed


def _distributed_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, seg = Painter(), segmenter()
        curve = removal_curve(model, "features", seg, "red", [0, 3, 1], num_samples=7)
        ace = average_causal_effect(
            model, "features", seg, "red", [0], locations=patch_locations((H, W), 2),
            num_samples=7, batch_size=2,
        )  # fmt: skip
        insertion = insertion_effect(model, "features", seg, "red", [0, 1], num_samples=7)
        if rank == 0:
            torch.save(
                {"curve": curve.to_dict(), "ace": ace.to_dict(), "ins": insertion.to_dict()}, out
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        port = 29500 + os.getpid() % 1000
        mp.spawn(_distributed_worker, args=(2, port, out), nprocs=2, join=True)
        split = torch.load(out, weights_only=False)
    model, seg = Painter(), segmenter()
    curve = removal_curve(model, "features", seg, "red", [0, 3, 1], num_samples=7)
    ace = average_causal_effect(
        model, "features", seg, "red", [0], locations=patch_locations((H, W), 2),
        num_samples=7, batch_size=2,
    )  # fmt: skip
    insertion = insertion_effect(model, "features", seg, "red", [0, 1], num_samples=7)
    assert split["curve"] == curve.to_dict()  # integer counts: exactly equal
    assert split["ace"]["ace"] == pytest.approx(ace.ace, abs=1e-9)
    assert split["ins"]["fraction_gained"] == pytest.approx(insertion.fraction_gained, abs=1e-9)
    assert split["ins"]["num_pairs"] == insertion.num_pairs
