"""TorchvisionSegmenter on a stand-in for torchvision's models, and its cache-only loading."""

from __future__ import annotations

import copy
import math
import sys
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dissect_callbacks.segmenters.base import Segmenter, checked_segment
from gan_dissect_callbacks.segmenters.module import resize_logits
from gan_dissect_callbacks.segmenters.torchvision import (
    TORCHVISION_MODELS,
    VOC_CATEGORIES,
    SegmentationLogits,
    TorchvisionSegmenter,
    torch_hub_checkpoint_path,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


class FakeVOC(nn.Module):
    """Behaves like torchvision's segmentation models: a dict of logits at the input's size.

    Logits are computed at half resolution and upsampled, like DeepLabV3's head; BatchNorm and
    Dropout make train/eval mode visible. Every input it sees is recorded.
    """

    def __init__(self, num_classes: int = 21, seed: int = 0, background_bias: float = 0.0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, num_classes, 3, stride=2, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(torch.randn(num_classes, generator=generator))  # type: ignore[union-attr]
            self.conv.bias[0] += background_bias  # type: ignore[index]
        self.bn = nn.BatchNorm2d(num_classes)
        self.dropout = nn.Dropout2d(0.5)
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.inputs.append(x.detach().clone())
        logits = self.dropout(self.bn(self.conv(x)))
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out, "aux": out.detach()}


def random_images(batch: int = 2, size: int = 16, seed: int = 1) -> Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def hand_normalised(images: Tensor) -> Tensor:
    return ((images + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD


def test_normalisation_is_imagenet_on_images_mapped_to_0_1() -> None:
    model = FakeVOC()
    images = random_images()
    TorchvisionSegmenter(model).segment(images)
    assert len(model.inputs) == 1
    assert torch.equal(model.inputs[0], hand_normalised(images))
    # White maps to (1 - mean) / std, black to -mean / std.
    extremes = torch.stack([torch.ones(3, 1, 1), -torch.ones(3, 1, 1)])
    TorchvisionSegmenter(model).segment(extremes)
    expected = torch.cat([(1 - IMAGENET_MEAN) / IMAGENET_STD, -IMAGENET_MEAN / IMAGENET_STD])
    assert torch.allclose(model.inputs[1], expected, atol=1e-6)


def test_background_takes_part_in_the_softmax_but_is_no_concept() -> None:
    model = FakeVOC(background_bias=2.0)
    reference = copy.deepcopy(model).eval()
    images = random_images()
    segmenter = TorchvisionSegmenter(model)
    assert isinstance(segmenter, Segmenter)
    assert segmenter.vocabulary.names == VOC_CATEGORIES[1:]
    assert set(segmenter.vocabulary.concept_categories()) == {"object"}

    with torch.no_grad():
        logits = reference(hand_normalised(images))["out"]
    probabilities = torch.softmax(logits, dim=1)
    scores = checked_segment(segmenter, images, soft=True)
    assert torch.allclose(scores, probabilities[:, 1:], atol=1e-6)
    # The 20 objects' probabilities leave room for the background.
    assert torch.allclose(scores.sum(1), 1 - probabilities[:, 0], atol=1e-6)

    masks = checked_segment(segmenter, images)
    winner = logits.argmax(1)
    background = winner == 0
    assert 0 < int(background.sum()) < background.numel()  # both cases are exercised
    assert torch.equal(masks.sum(1), (~background).long())
    for b, i, j in (~background).nonzero().tolist():
        assert masks[b, :, i, j].nonzero().flatten().tolist() == [winner[b, i, j].item() - 1]
    assert masks.is_contiguous()


def test_include_background_makes_it_concept_0_and_probabilities_sum_to_1() -> None:
    model = FakeVOC(background_bias=2.0)
    segmenter = TorchvisionSegmenter(model, include_background=True)
    assert segmenter.vocabulary[0].name == "background"
    assert segmenter.vocabulary.categories == ("object", "background")
    images = random_images()
    scores = checked_segment(segmenter, images, soft=True)
    assert torch.allclose(scores.sum(1), torch.ones(2, 16, 16), atol=1e-6)
    masks = checked_segment(segmenter, images)
    assert torch.equal(masks.sum(1), torch.ones(2, 16, 16, dtype=torch.long))
    assert torch.equal(masks, F.one_hot(scores.argmax(1), 21).permute(0, 3, 1, 2).bool())


def test_output_size_resizes_the_logits() -> None:
    model = FakeVOC()
    reference = copy.deepcopy(model).eval()
    images = random_images(size=12)
    segmenter = TorchvisionSegmenter(model, output_size=(6, 9))
    assert segmenter.segmentation_size((12, 12)) == (6, 9)
    with torch.no_grad():
        logits = reference(hand_normalised(images))["out"]
    expected = F.interpolate(logits, size=(6, 9), mode="bilinear", align_corners=False)
    assert torch.allclose(segmenter.logits(images), expected, atol=1e-6)
    checked_segment(segmenter, images)
    square = TorchvisionSegmenter(model, output_size=5)
    assert square.segmentation_size((12, 12)) == (5, 5)
    assert TorchvisionSegmenter(model).segmentation_size((12, 7)) == (12, 7)


def test_multi_scale_averages_the_single_scale_logits() -> None:
    model = FakeVOC()
    images = random_images(size=12)
    scales = (0.5, 1.0, 1.5)
    single = [
        TorchvisionSegmenter(model, scales=(s,), output_size=8).logits(images) for s in scales
    ]
    combined = TorchvisionSegmenter(model, scales=scales, output_size=8)
    model.inputs.clear()
    averaged = combined.logits(images)
    assert torch.allclose(averaged, torch.stack(single).mean(0), atol=1e-6)
    # Each scale really ran at its own resolution.
    assert [tuple(x.shape[-2:]) for x in model.inputs] == [(6, 6), (12, 12), (18, 18)]
    # And the single-scale logits differ, so the average is not trivially one of them.
    assert not torch.allclose(single[0], single[1], atol=1e-3)
    scores = checked_segment(combined, images, soft=True)
    assert torch.allclose(scores, torch.softmax(averaged, 1)[:, 1:], atol=1e-6)


def test_downscaled_input_is_antialiased_bilinear() -> None:
    model = FakeVOC()
    images = random_images(size=12)
    TorchvisionSegmenter(model, scales=(0.5,)).segment(images)
    expected = F.interpolate(
        hand_normalised(images), size=(6, 6), mode="bilinear", align_corners=False, antialias=True
    )
    assert torch.allclose(model.inputs[0], expected, atol=1e-6)


def test_gradients_reach_the_images_and_not_the_parameters_with_autograd_grad() -> None:
    model = FakeVOC()
    images = random_images().requires_grad_(True)
    segmenter = TorchvisionSegmenter(model, scales=(0.5, 1.0))
    scores = segmenter.soft_segment(images)
    assert scores.requires_grad
    (grad,) = torch.autograd.grad(scores[:, 14].sum(), images)  # "person"
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_modes_and_batchnorm_statistics_are_restored() -> None:
    model = FakeVOC().train()
    model.bn.eval()  # deliberately frozen: must stay so
    state = copy.deepcopy(model.state_dict())
    segmenter = TorchvisionSegmenter(model)
    first = segmenter.segment(random_images())
    second = segmenter.segment(random_images())
    assert torch.equal(first, second)  # no dropout randomness: eval mode inside
    assert model.training and model.dropout.training and not model.bn.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_wrapper_moves_with_the_model_and_keeps_its_state_dict() -> None:
    model = FakeVOC()
    segmenter = TorchvisionSegmenter(model)
    assert isinstance(segmenter.module, SegmentationLogits)
    assert set(segmenter.module.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    double = segmenter.module.to(torch.float64)
    assert double.mean.dtype == torch.float64 and model.conv.weight.dtype == torch.float64
    assert segmenter.soft_segment(random_images().double()).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"categories": ["__background__"]}, "Expected argument `categories`"),
        ({"categories": "abc"}, "Expected argument `categories`"),
        ({"include_background": 1}, "Expected argument `include_background` to be a bool"),
        ({"scales": ()}, "Expected argument `scales` to be a non-empty sequence"),
        ({"scales": (1.0, 0.0)}, "positive floats, but got (1.0, 0.0)"),
        ({"scales": (math.nan,)}, "Expected argument `scales`"),
        ({"scales": 2.0}, "Expected argument `scales`"),
        ({"scales": (True,)}, "Expected argument `scales`"),
        ({"mean": (0.5, 0.5)}, "Expected argument `mean` to be 3 finite floats"),
        ({"std": (0.5, 0.0, 0.5)}, "Expected argument `std` to be 3 positive finite floats"),
        ({"output_size": (0, 4)}, "Expected argument `output_size` to be a pair of positive"),
        ({"output_size": True}, "Expected argument `output_size`"),
    ],
)
def test_bad_arguments_get_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        TorchvisionSegmenter(FakeVOC(), **kwargs)
    assert message in str(info.value)


def test_model_that_returns_no_dict_is_named() -> None:
    segmenter = TorchvisionSegmenter(nn.Conv2d(3, 21, 1))
    with pytest.raises(
        TypeError, match=r"return a dict with the logits tensor under 'out', but got Tensor"
    ):
        segmenter.segment(random_images())


def test_wrong_number_of_classes_is_named() -> None:
    segmenter = TorchvisionSegmenter(FakeVOC(num_classes=5))
    with pytest.raises(
        ValueError, match=r"one channel per concept of the vocabulary, but got .* \[2, 5, 16, 16\]"
    ):
        segmenter.segment(random_images())
    custom = TorchvisionSegmenter(FakeVOC(num_classes=3), categories=["bg", "cat", "dog"])
    assert custom.vocabulary.names == ("cat", "dog")
    checked_segment(custom, random_images())


# ----------------------------------------------------------------------------- loading


class FakeWeights(Enum):
    """Stands in for a torchvision weights enum (members with .url and .meta, a DEFAULT alias)."""

    COCO_WITH_VOC_LABELS_V1 = "https://download.example.org/models/fake_voc-0123abcd.pth"
    DEFAULT = "https://download.example.org/models/fake_voc-0123abcd.pth"

    @property
    def url(self) -> str:
        return str(self.value)

    @property
    def meta(self) -> dict[str, Any]:
        return {"categories": ["__background__", *(f"c{i}" for i in range(20))]}


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Install a stand-in torchvision whose builder records its arguments; hub dir in tmp."""
    calls: list[dict[str, Any]] = []

    def builder(**kwargs: Any) -> FakeVOC:
        calls.append(kwargs)
        return FakeVOC()

    models = SimpleNamespace(
        get_model_weights=lambda name: FakeWeights,
        segmentation=SimpleNamespace(**{name: builder for name in TORCHVISION_MODELS}),
    )
    monkeypatch.setitem(sys.modules, "torchvision", SimpleNamespace(models=models))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return calls


def test_checkpoint_path_is_in_the_torch_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = torch_hub_checkpoint_path("https://host/models/deeplabv3_resnet50_coco-cd0a2569.pth")
    assert path == tmp_path / "hub" / "checkpoints" / "deeplabv3_resnet50_coco-cd0a2569.pth"


def test_missing_weights_raise_before_building(
    fake_torchvision: list[dict[str, Any]], tmp_path: Path
) -> None:
    expected = tmp_path / "hub" / "checkpoints" / "fake_voc-0123abcd.pth"
    with pytest.raises(FileNotFoundError) as info:
        TorchvisionSegmenter.from_pretrained("deeplabv3_resnet50")
    message = str(info.value)
    assert str(expected) in message and FakeWeights.DEFAULT.url in message
    assert "FakeWeights.COCO_WITH_VOC_LABELS_V1 of `deeplabv3_resnet50`" in message
    assert "TORCH_HOME" in message
    assert fake_torchvision == []  # nothing was built, so nothing could download


def test_cached_weights_are_loaded_through_the_builder(
    fake_torchvision: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "hub" / "checkpoints" / "fake_voc-0123abcd.pth"
    path.parent.mkdir(parents=True)
    path.touch()
    segmenter = TorchvisionSegmenter.from_pretrained(
        "fcn_resnet50", output_size=8, scales=(1.0, 2.0)
    )
    assert fake_torchvision == [
        {
            "weights": FakeWeights.COCO_WITH_VOC_LABELS_V1,
            "weights_backbone": None,
            "progress": False,
        }
    ]
    assert segmenter.vocabulary.names == tuple(f"c{i}" for i in range(20))  # from the weights' meta
    assert checked_segment(segmenter, random_images()).shape == (2, 20, 8, 8)


def test_random_weights_need_no_file(fake_torchvision: list[dict[str, Any]]) -> None:
    segmenter = TorchvisionSegmenter.from_pretrained(
        "lraspp_mobilenet_v3_large", weights=None, include_background=True
    )
    assert fake_torchvision == [{"weights": None, "weights_backbone": None, "progress": False}]
    assert segmenter.vocabulary.names == ("background", *VOC_CATEGORIES[1:])


def test_unknown_weights_and_names_are_listed(fake_torchvision: list[dict[str, Any]]) -> None:
    with pytest.raises(
        ValueError, match=r"`weights` to be None or one of \['COCO_WITH_VOC_LABELS_V1', 'DEFAULT'\]"
    ):
        TorchvisionSegmenter.from_pretrained("fcn_resnet50", weights="IMAGENET")
    with pytest.raises(
        ValueError, match=r"`name` to be one of \['deeplabv3_mobilenet_v3_large'.*but got 'unet'"
    ):
        TorchvisionSegmenter.from_pretrained("unet")


def test_without_torchvision_loading_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(ImportError, match=r'pip install "gan_dissect_callbacks\[torchvision\]"'):
        TorchvisionSegmenter.from_pretrained("deeplabv3_resnet50")
    # An adapter around a model you built needs no torchvision.
    checked_segment(TorchvisionSegmenter(FakeVOC()), random_images())


def test_real_torchvision_builds_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TorchvisionSegmenter.from_pretrained("lraspp_mobilenet_v3_large")
    segmenter = TorchvisionSegmenter.from_pretrained("lraspp_mobilenet_v3_large", weights=None)
    assert segmenter.vocabulary.names == VOC_CATEGORIES[1:]
    assert checked_segment(segmenter, random_images(size=32), soft=True).shape == (2, 20, 32, 32)
    assert not (tmp_path / "hub" / "checkpoints").exists()  # nothing was downloaded


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_the_model_runs_at_the_segmenters_precision(precision) -> None:
    dtypes: list[torch.dtype] = []
    model = FakeVOC().eval()
    model.conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    images = random_images()
    full = TorchvisionSegmenter(model).logits(images)
    reduced = TorchvisionSegmenter(model, precision=precision).logits(images)
    assert dtypes == [torch.float32, torch.bfloat16 if precision == "bf16-mixed" else torch.float16]
    assert reduced.dtype == torch.float32
    assert torch.allclose(reduced, full, atol=0.05 * float(full.abs().max()))


def test_masks_take_the_argmax_of_logits_resized_in_channels_last() -> None:
    model = FakeVOC(num_classes=21)
    segmenter = TorchvisionSegmenter(model, output_size=(24, 24), include_background=True)
    images = random_images(batch=3, size=12)
    wrapper = segmenter.module.eval()  # the segmenter runs it so; called directly, set it here
    with torch.no_grad():
        fast = wrapper(images, channels_last=True)
        default = wrapper(images)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert default.is_contiguous() and torch.allclose(fast, default, rtol=0, atol=4e-6)
    with torch.no_grad():
        native = model(hand_normalised(images))["out"]
    assert torch.equal(fast, resize_logits(native, (24, 24)))
    masks = segmenter.segment(images)
    assert masks.is_contiguous()
    assert torch.equal(masks, F.one_hot(fast.argmax(dim=1), 21).permute(0, 3, 1, 2).bool())
    assert torch.equal(segmenter.logits(images), default)
