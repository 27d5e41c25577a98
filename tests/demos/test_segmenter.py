"""The shipped toy segmenter: accuracy on held-out scenes, protocol, and its training code."""

import pytest
import torch

from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY, render_scenes
from gan_dissect_callbacks.demos.segmenter import (
    evaluate_segmenter,
    load_toy_segmenter,
    load_toy_segmenter_net,
    save_toy_segmenter_net,
    train_toy_segmenter,
)
from gan_dissect_callbacks.segmenters.base import Segmenter, checked_segment


@pytest.fixture(scope="module")
def segmenter():
    return load_toy_segmenter()


@pytest.mark.parametrize(
    ("degraded", "floor_mean", "floor_each"), [(False, 0.95, 0.9), (True, 0.9, 0.8)]
)
def test_shipped_segmenter_is_accurate_on_held_out_scenes(
    segmenter, degraded, floor_mean, floor_each
):
    iou = evaluate_segmenter(segmenter.segment, num_scenes=400, degraded=degraded, seed=777)
    assert iou["mean"] > floor_mean, iou
    worst = min((v, k) for k, v in iou.items() if k != "mean")
    assert worst[0] > floor_each, f"worst concept {worst[1]}: {worst[0]:.3f}"


def test_segmenter_follows_the_protocol(segmenter):
    assert isinstance(segmenter, Segmenter)
    assert segmenter.vocabulary == SCENE_VOCABULARY
    images, _ = render_scenes(3, 32, generator=torch.Generator().manual_seed(5))
    masks = checked_segment(segmenter, images)
    assert masks.shape == (3, 14, 32, 32)
    soft = checked_segment(segmenter, images, soft=True)
    assert torch.equal(soft > 0.5, masks)
    assert segmenter.segmentation_size((32, 32)) == (32, 32)


def test_evaluation_scores_an_empty_segmentation_zero():
    def empty(images):
        return torch.zeros(images.shape[0], 14, 32, 32, dtype=torch.bool)

    assert evaluate_segmenter(empty, num_scenes=20)["mean"] == 0.0


def test_training_code_learns_and_round_trips_through_the_weights_file(tmp_path):
    net = train_toy_segmenter(30, batch_size=8, width=4, lr=1e-2, log=None)
    before = evaluate_segmenter(lambda x: net(x) > 0, num_scenes=40)
    path = tmp_path / "seg.pt"
    save_toy_segmenter_net(net, path)
    loaded = load_toy_segmenter_net(path)
    after = evaluate_segmenter(lambda x: loaded(x) > 0, num_scenes=40)
    assert before["sky"] > 0.5  # 30 tiny steps already find the sky
    assert abs(before["mean"] - after["mean"]) < 0.02  # float16 storage costs little


def test_missing_weights_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-segmenter"):
        load_toy_segmenter_net(tmp_path / "nope.pt")
