"""The segmenter protocol, the input/output checks and the ground-truth segmenter."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gan_dissect_callbacks.segmenters.base import (
    GroundTruthSegmenter,
    Segmenter,
    check_images,
    check_segmentation,
    checked_segment,
)
from gan_dissect_callbacks.segmenters.module import ModuleSegmenter
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

VOCAB = ConceptVocabulary.from_pairs([("sky", "object"), ("ground", "object"), ("red", "color")])


def scene_masks(images: Tensor) -> Tensor:
    """Exact masks: sky = top half, ground = bottom half, red = red channel > 0.5."""
    batch, _, height, width = images.shape
    rows = torch.arange(height).reshape(1, height, 1).expand(batch, height, width)
    sky = rows < height // 2
    return torch.stack([sky, ~sky, images[:, 0] > 0.5], dim=1)


def images_2x4x4() -> Tensor:
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0, 0, 0] = 1.0
    images[1, 0, 3, :] = 0.75
    return images


# ---------------------------------------------------------------- protocol


def test_shipped_segmenters_satisfy_the_protocol() -> None:
    assert isinstance(GroundTruthSegmenter(VOCAB, scene_masks), Segmenter)
    assert isinstance(ModuleSegmenter(nn.Conv2d(3, 3, 1), VOCAB), Segmenter)


def test_a_plain_class_with_a_vocabulary_attribute_satisfies_the_protocol() -> None:
    class Plain:
        def __init__(self) -> None:
            self.vocabulary = VOCAB

        def segment(self, images: Tensor) -> Tensor:
            return scene_masks(images)

        def soft_segment(self, images: Tensor) -> Tensor:
            return scene_masks(images).float()

        def segmentation_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
            return image_size

    segmenter = Plain()
    assert isinstance(segmenter, Segmenter)
    assert torch.equal(checked_segment(segmenter, images_2x4x4()), scene_masks(images_2x4x4()))


def test_checked_segment_names_the_missing_members() -> None:
    class HardOnly:
        vocabulary = VOCAB

        def segment(self, images: Tensor) -> Tensor:
            return scene_masks(images)

    assert not isinstance(HardOnly(), Segmenter)
    with pytest.raises(TypeError, match="but HardOnly lacks soft_segment, segmentation_size"):
        checked_segment(HardOnly(), images_2x4x4())  # type: ignore[arg-type]


# ---------------------------------------------------------------- check_images


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_check_images_accepts_float_images_in_range(dtype: torch.dtype) -> None:
    images = torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4).to(dtype)
    check_images(images)


def test_check_images_tolerates_a_small_overshoot_only() -> None:
    check_images(torch.full((1, 3, 1, 1), 1.0009))
    check_images(torch.full((1, 3, 1, 1), -1.0009))
    with pytest.raises(ValueError, match=r"got values in \[1\.002, 1\.002\]"):
        check_images(torch.full((1, 3, 1, 1), 1.002))
    check_images(torch.full((1, 3, 1, 1), 1.002), atol=0.01)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.zeros(1, 3, 2, 2, dtype=torch.uint8), TypeError, "float tensor.*dtype torch.uint8"),
        ([[0.0]], TypeError, "float tensor of shape .B, 3, H, W., but got list"),
        (
            torch.zeros(2, 1, 8, 8),
            ValueError,
            r"shape \[B, 3, H, W\] \(RGB\), but got \[2, 1, 8, 8\]",
        ),
        (torch.zeros(3, 8, 8), ValueError, r"but got \[3, 8, 8\]"),
        (torch.zeros(0, 3, 8, 8), ValueError, r"at least one pixel .*\[0, 3, 8, 8\]"),
        (
            torch.tensor([0.0, float("nan"), 0.0]).reshape(1, 3, 1, 1),
            ValueError,
            "finite, but got NaN or Inf",
        ),
        (torch.full((1, 3, 1, 1), float("-inf")), ValueError, "finite, but got NaN or Inf"),
        (
            torch.tensor([0.0, 128.0, 255.0]).reshape(1, 3, 1, 1),
            ValueError,
            r"in \[-1, 1\], but got values in \[0, 255\]\. .*tanh.*x \* 2 - 1.*x / 127\.5 - 1",
        ),
    ],
)
def test_check_images_rejects_bad_images(images: Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        check_images(images)


# ---------------------------------------------------------------- check_segmentation


def test_check_segmentation_accepts_good_outputs() -> None:
    check_segmentation(
        torch.zeros(2, 3, 5, 7, dtype=torch.bool), batch_size=2, num_concepts=3, size=(5, 7)
    )
    check_segmentation(
        torch.tensor([0.0, 1.0, 1.0 + 1e-6]).reshape(1, 3, 1, 1),
        batch_size=1,
        num_concepts=3,
        soft=True,
    )


@pytest.mark.parametrize(
    ("output", "soft", "error", "match"),
    [
        ([1, 2], False, TypeError, "masks to be a Tensor, but got list"),
        (torch.zeros(2, 3, 8, dtype=torch.bool), False, ValueError, r"\[B=2, C=3, S, S'\]"),
        (
            torch.zeros(1, 3, 8, 8, dtype=torch.bool),
            False,
            ValueError,
            r"one entry per image \(2\), but got 1",
        ),
        (
            torch.zeros(2, 4, 8, 8),
            True,
            ValueError,
            r"soft scores to have one channel per concept of its vocabulary \(3\), but got 4",
        ),
        (
            torch.zeros(2, 3, 4, 4, dtype=torch.bool),
            False,
            ValueError,
            r"segmentation_size declares \(8x8\), but got 4x4",
        ),
        (
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            False,
            TypeError,
            r"dtype torch.bool, but got torch.uint8\. .*\.bool\(\)",
        ),
        (torch.zeros(2, 3, 8, 8), False, TypeError, "dtype torch.bool, but got torch.float32"),
        (
            torch.zeros(2, 3, 8, 8, dtype=torch.bool),
            True,
            TypeError,
            "soft scores to be floating, but got torch.bool",
        ),
        (torch.full((2, 3, 8, 8), -0.5), True, ValueError, r"\[0, 1\], but got values in \[-0\.5"),
        (torch.full((2, 3, 8, 8), 3.0), True, ValueError, "apply sigmoid .* or softmax"),
        (torch.full((2, 3, 8, 8), float("nan")), True, ValueError, "soft scores to be finite"),
    ],
)
def test_check_segmentation_rejects_bad_outputs(
    output: Tensor, soft: bool, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        check_segmentation(output, batch_size=2, num_concepts=3, size=(8, 8), soft=soft)


# ---------------------------------------------------------------- checked_segment


def test_checked_segment_returns_the_exact_masks_and_scores() -> None:
    segmenter = GroundTruthSegmenter(VOCAB, scene_masks)
    images = images_2x4x4()
    masks = checked_segment(segmenter, images)
    assert masks.dtype == torch.bool
    assert masks[:, 0].sum().item() == 16  # sky: top 2 rows of both 4x4 images
    assert masks[0, 2].nonzero().tolist() == [[0, 0]]
    assert masks[1, 2].nonzero().tolist() == [[3, 0], [3, 1], [3, 2], [3, 3]]
    scores = checked_segment(segmenter, images, soft=True)
    assert torch.equal(scores, masks.float())


def test_checked_segment_rejects_bad_images_before_running_the_segmenter() -> None:
    calls: list[Tensor] = []

    def fn(images: Tensor) -> Tensor:
        calls.append(images)
        return scene_masks(images)

    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        checked_segment(GroundTruthSegmenter(VOCAB, fn), torch.full((1, 3, 2, 2), 2.0))
    assert calls == []


def test_checked_segment_catches_a_wrong_declared_size() -> None:
    segmenter = GroundTruthSegmenter(VOCAB, scene_masks, output_size=(2, 2))
    with pytest.raises(ValueError, match=r"declares \(2x2\), but got 4x4"):
        checked_segment(segmenter, images_2x4x4())


def test_checked_segment_catches_a_wrong_concept_count() -> None:
    segmenter = GroundTruthSegmenter(VOCAB, lambda x: scene_masks(x)[:, :2])
    with pytest.raises(ValueError, match=r"concept of its vocabulary \(3\), but got 2"):
        checked_segment(segmenter, images_2x4x4())


# ---------------------------------------------------------------- GroundTruthSegmenter


def test_ground_truth_segmenter_uses_soft_fn_and_output_size() -> None:
    def soft(images: Tensor) -> Tensor:
        return scene_masks(images).float() * 0.5

    segmenter = GroundTruthSegmenter(VOCAB, scene_masks, soft, output_size=(4, 4))
    assert segmenter.vocabulary is VOCAB
    assert segmenter.segmentation_size((4, 4)) == (4, 4)
    scores = checked_segment(segmenter, images_2x4x4(), soft=True)
    assert torch.equal(scores, scene_masks(images_2x4x4()).float() * 0.5)


def test_ground_truth_segmenter_size_defaults_to_the_image_size() -> None:
    assert GroundTruthSegmenter(VOCAB, scene_masks).segmentation_size((32, 48)) == (32, 48)


def test_ground_truth_segmenter_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="`vocabulary` to be a ConceptVocabulary, but got list"):
        GroundTruthSegmenter(["sky"], scene_masks)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`fn` to be callable, but got None"):
        GroundTruthSegmenter(VOCAB, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`soft_fn` to be callable, but got int"):
        GroundTruthSegmenter(VOCAB, scene_masks, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`output_size` to be a pair of positive ints"):
        GroundTruthSegmenter(VOCAB, scene_masks, output_size=(0, 4))
