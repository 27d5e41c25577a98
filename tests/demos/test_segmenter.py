"""The shipped toy segmenter: accuracy on held-out scenes, protocol, and its training code."""

import pytest
import torch
import torch.nn.functional as F

from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY, render_scenes
from gan_dissect_callbacks.demos.segmenter import (
    ToySegmenterNet,
    degrade,
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


def _layer_by_layer(net: ToySegmenterNet, images: torch.Tensor) -> torch.Tensor:
    """The U-Net as its modules run it: each block's convs and BatchNorms one after another."""
    e1 = net.enc1(images)
    e2 = net.enc2(F.max_pool2d(e1, 2))
    e3 = net.enc3(F.max_pool2d(e2, 2))
    d2 = net.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="bilinear"), e2], 1))
    d1 = net.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear"), e1], 1))
    return net.head(d1)


def test_inference_path_gives_the_modules_logits_and_masks() -> None:
    """Eval mode folds BatchNorm into the convs: the same logits up to float rounding."""
    net = load_toy_segmenter_net()
    images, _ = render_scenes(64, 32, generator=torch.Generator().manual_seed(9))
    images = torch.cat([images, degrade(images, torch.Generator().manual_seed(10))])
    with torch.no_grad():
        fast, reference = net(images), _layer_by_layer(net, images)
    assert fast.shape == reference.shape and fast.is_contiguous()
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-4)
    assert torch.equal(fast > 0, reference > 0)


def test_inference_path_reads_the_current_statistics_and_passes_gradients() -> None:
    torch.manual_seed(0)
    net = ToySegmenterNet(width=4).eval()
    with torch.no_grad():  # running statistics far from the initial ones
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    images = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_()
    torch.testing.assert_close(net(images), _layer_by_layer(net, images), rtol=0, atol=1e-5)
    (grad,) = torch.autograd.grad(net(images).sum(), images)
    (expected,) = torch.autograd.grad(_layer_by_layer(net, images).sum(), images)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_training_mode_uses_batch_statistics_as_before() -> None:
    torch.manual_seed(0)
    net = ToySegmenterNet(width=4).train()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    twin = ToySegmenterNet(width=4).train()
    twin.load_state_dict(net.state_dict())
    assert torch.equal(net(images), _layer_by_layer(twin, images))
    for a, b in zip(net.buffers(), twin.buffers(), strict=True):
        assert torch.equal(a, b)  # both updated their running statistics alike


def test_the_toy_segmenter_in_bf16_scores_as_in_float32():
    kw = {"num_scenes": 400, "degraded": True, "seed": 778}
    full = evaluate_segmenter(load_toy_segmenter(precision="32-true").segment, **kw)
    half = evaluate_segmenter(load_toy_segmenter(precision="bf16-mixed").segment, **kw)
    assert max(abs(full[k] - half[k]) for k in full) < 0.005, (full, half)
    assert load_toy_segmenter().precision == "auto"
