"""Intervention engine on the trained toy GAN: its top units remove and insert their concepts."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from gan_dissect_callbacks.engines.intervention import (
    insertion_effect,
    iou_ranking,
    iou_scores,
    optimize_alpha,
    patch_locations,
    removal_curve,
)

TOY_LAYER = "generator.layer3"  # 32 units at 16x16


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, Any, Any]:
    from gan_dissect_callbacks.demos.pretrained import load_pretrained_scene_gan
    from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
    from gan_dissect_callbacks.engines.dissection import dissect

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gan, seg = load_pretrained_scene_gan(), load_toy_segmenter()
        report = dissect(gan, [TOY_LAYER], seg, num_samples=256, batch_size=64, top_k=0)
    finally:
        torch.set_num_threads(threads)
    return gan, seg, report


@pytest.mark.parametrize("concept", ["sun", "cloud", "tree", "house"])
def test_toy_gan_top_units_remove_their_concept_random_units_do_not(
    toy: tuple[nn.Module, Any, Any], concept: str
) -> None:
    """Ablating a concept's 5 best IoU units removes most of it; 5 random units remove far less."""
    gan, seg, report = toy
    curve = removal_curve(
        gan, TOY_LAYER, seg, concept, iou_ranking(report, TOY_LAYER, concept), max_units=5,
        num_random=3, num_samples=32, batch_size=64,
    )  # fmt: skip
    top, random = curve.removed_at(5), curve.random_mean[4]
    print(f"{concept}: top-n removed {curve.removed}, random {curve.random_mean}")
    assert top >= 0.5
    assert random <= top - 0.3
    assert sum(curve.removed) > sum(curve.random_mean) + 1.0  # the whole curve, not one point


@pytest.mark.parametrize("concept", ["sun", "cloud", "tree"])
def test_toy_gan_insertion_adds_the_concept_where_it_was_absent(
    toy: tuple[nn.Module, Any, Any], concept: str
) -> None:
    gan, seg, report = toy
    top = iou_ranking(report, TOY_LAYER, concept)[:6]  # more than near-ties of IoU can reorder
    result = insertion_effect(
        gan, TOY_LAYER, seg, concept, top, locations=patch_locations((16, 16), 4),
        num_random=1, num_samples=24, batch_size=64,
    )  # fmt: skip
    print(f"{concept}: gained {result.fraction_gained} random {result.random_fraction_gained}")
    assert result.fraction_before == 0.0 and result.num_pairs > 100
    assert result.fraction_gained >= 0.05
    assert result.fraction_gained >= 10 * result.random_fraction_gained[0]


@pytest.mark.slow
@pytest.mark.parametrize("concept", ["sun", "tree", "house"])
def test_toy_gan_alpha_ranking_removes_at_least_as_much_as_iou_ranking(
    toy: tuple[nn.Module, Any, Any], concept: str
) -> None:
    gan, seg, report = toy
    alpha = optimize_alpha(
        gan, TOY_LAYER, seg, concept, init=iou_scores(report, TOY_LAYER, concept),
        locations=patch_locations((16, 16), 4), steps=40, batch_size=8, value_samples=32,
    )  # fmt: skip
    for p in [*gan.parameters(), *seg.module.parameters()]:
        assert p.grad is None
    by_alpha = removal_curve(
        gan, TOY_LAYER, seg, concept, alpha.ranking, max_units=5, num_random=0, num_samples=32
    )
    by_iou = removal_curve(
        gan, TOY_LAYER, seg, concept, iou_ranking(report, TOY_LAYER, concept), max_units=5,
        num_random=0, num_samples=32,
    )  # fmt: skip
    print(f"{concept}: alpha {by_alpha.removed} iou {by_iou.removed}")
    first, last = alpha.history[:10], alpha.history[-10:]
    assert sum(s.ace for s in last) > sum(s.ace for s in first)  # each step sees new latents
    assert sum(by_alpha.removed) >= sum(by_iou.removed)
