"""TransformersSegmenter on tiny, randomly initialised SegFormer and UperNet models.

Tests that build a model skip when transformers is absent; the vocabulary and normalisation
rules, and the error without transformers, are tested either way.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dissect_callbacks.segmenters.ade20k import ADE20K_NAMES, ADE20K_VOCABULARY
from gan_dissect_callbacks.segmenters.base import Segmenter, checked_segment
from gan_dissect_callbacks.segmenters.torchvision import SegmentationLogits
from gan_dissect_callbacks.segmenters.transformers import (
    TransformersSegmenter,
    normalization_from_processor_config,
    vocabulary_from_id2label,
)
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

# As in the label maps of the public ADE20K checkpoints, including the trailing space of "bed ".
ADE_ID2LABEL = {i: ("bed " if name == "bed" else name) for i, name in enumerate(ADE20K_NAMES)}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def tiny_segformer(seed: int = 0) -> nn.Module:
    """A 2-stage SegFormer (~10k parameters) with 150 ADE20K labels; logits at 1/4 resolution."""
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=150,
        id2label=ADE_ID2LABEL,
        label2id={label: i for i, label in ADE_ID2LABEL.items()},
    )
    torch.manual_seed(seed)
    return transformers.SegformerForSemanticSegmentation(config)


def tiny_upernet(seed: int = 0) -> nn.Module:
    """UperNet on a 4-stage ConvNeXt with tiny widths; logits at the input's resolution."""
    transformers = pytest.importorskip("transformers")
    backbone = transformers.ConvNextConfig(
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        use_auxiliary_head=False,
        num_labels=150,
        id2label=ADE_ID2LABEL,
        label2id={label: i for i, label in ADE_ID2LABEL.items()},
    )
    torch.manual_seed(seed)
    return transformers.UperNetForSemanticSegmentation(config)


def random_images(batch: int = 2, size: int = 16, seed: int = 1) -> Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def record_inputs(model: nn.Module) -> list[Tensor]:
    """Record the pixel_values every forward of ``model`` receives."""
    seen: list[Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pixels = args[0] if args else kwargs["pixel_values"]
        seen.append(pixels.detach().clone())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def raw_logits(model: nn.Module, pixel_values: Tensor) -> Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).eval()(pixel_values=pixel_values).logits


# ------------------------------------------------------------------------------- models


def test_segformer_vocabulary_is_ade20k() -> None:
    segmenter = TransformersSegmenter(tiny_segformer())
    assert isinstance(segmenter, Segmenter)
    assert segmenter.vocabulary == ADE20K_VOCABULARY


def test_segformer_quarter_resolution_logits_are_resized_to_the_images() -> None:
    model = tiny_segformer()
    images = random_images()
    expected = raw_logits(model, ((images + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD)
    assert expected.shape == (2, 150, 4, 4)
    segmenter = TransformersSegmenter(model)
    assert segmenter.segmentation_size((16, 16)) == (16, 16)
    resized = F.interpolate(expected, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(segmenter.logits(images), resized, atol=1e-5)

    scores = checked_segment(segmenter, images, soft=True)
    assert torch.allclose(scores.sum(1), torch.ones(2, 16, 16), atol=1e-5)
    masks = checked_segment(segmenter, images)
    assert torch.equal(masks.sum(1), torch.ones(2, 16, 16, dtype=torch.long))
    assert torch.equal(masks.float().argmax(1), resized.argmax(1))


def test_declared_output_size() -> None:
    segmenter = TransformersSegmenter(tiny_segformer(), output_size=(8, 6))
    assert segmenter.segmentation_size((16, 16)) == (8, 6)
    assert checked_segment(segmenter, random_images()).shape == (2, 150, 8, 6)
    assert TransformersSegmenter(tiny_segformer(), output_size=5).segmentation_size((9, 9)) == (
        5,
        5,
    )


def test_normalisation_is_applied_exactly() -> None:
    model = tiny_segformer()
    seen = record_inputs(model)
    images = random_images()
    mean, std = (0.5, 0.25, 0.125), (0.5, 1.0, 2.0)
    segmenter = TransformersSegmenter(model, mean=mean, std=std)
    logits = segmenter.logits(images)
    by_hand = torch.empty_like(images)
    for c in range(3):
        by_hand[:, c] = ((images[:, c] + 1) / 2 - mean[c]) / std[c]
    assert len(seen) == 1
    assert torch.allclose(seen[0], by_hand, atol=1e-7)
    expected = F.interpolate(raw_logits(model, by_hand), size=(16, 16), mode="bilinear")
    assert torch.allclose(logits, expected, atol=1e-5)


def test_multi_scale_averages_logits_over_scales() -> None:
    model = tiny_segformer()
    seen = record_inputs(model)
    images = random_images()
    scales = (0.5, 1.0, 2.0)
    single = [
        TransformersSegmenter(model, scales=(s,), output_size=8).logits(images) for s in scales
    ]
    seen.clear()
    averaged = TransformersSegmenter(model, scales=scales, output_size=8).logits(images)
    assert [tuple(x.shape[-2:]) for x in seen] == [(8, 8), (16, 16), (32, 32)]
    assert torch.allclose(averaged, torch.stack(single).mean(0), atol=1e-5)
    assert not torch.allclose(single[0], single[2], atol=1e-3)


def test_upernet_full_resolution_logits() -> None:
    model = tiny_upernet()
    images = random_images(size=32)
    segmenter = TransformersSegmenter(model, output_size=8)
    assert segmenter.vocabulary == ADE20K_VOCABULARY
    expected = raw_logits(model, ((images + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD)
    assert expected.shape == (2, 150, 32, 32)
    resized = F.interpolate(expected, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(segmenter.logits(images), resized, atol=1e-5)
    scores = checked_segment(segmenter, images, soft=True)
    assert torch.allclose(scores.sum(1), torch.ones(2, 8, 8), atol=1e-5)
    assert checked_segment(segmenter, images).sum().item() == 2 * 8 * 8


@pytest.mark.parametrize(
    ("build", "scales"), [(tiny_segformer, (1.0, 0.5)), (tiny_upernet, (1.0,))]
)
def test_gradients_reach_the_images(build: Any, scales: tuple[float, ...]) -> None:
    model = build()
    segmenter = TransformersSegmenter(model, scales=scales)
    images = random_images(size=32).requires_grad_(True)
    scores = segmenter.soft_segment(images)
    sky = ADE20K_VOCABULARY.index("sky")
    (grad,) = torch.autograd.grad(scores[:, sky].mean(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_is_restored_and_dropout_off_inside() -> None:
    model = tiny_segformer().train()
    state = copy.deepcopy(model.state_dict())
    segmenter = TransformersSegmenter(model)
    images = random_images()
    assert torch.equal(segmenter.soft_segment(images), segmenter.soft_segment(images))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_the_wrapper_is_one_module() -> None:
    model = tiny_segformer()
    segmenter = TransformersSegmenter(model)
    assert isinstance(segmenter.module, SegmentationLogits)
    assert set(segmenter.module.state_dict()) == {f"model.{k}" for k in model.state_dict()}


# --------------------------------------------------------------- models without transformers


class DuckModel(nn.Module):
    """A model shaped like a transformers one: config.id2label and an output with .logits."""

    def __init__(self, id2label: dict[int, str] | None, output: str = "object") -> None:
        super().__init__()
        if id2label is not None:
            self.config = SimpleNamespace(id2label=id2label)
        self.head = nn.Conv2d(3, 2, 2, stride=2)
        self.output = output

    def forward(self, pixel_values: Tensor) -> Any:
        logits = self.head(pixel_values)
        if self.output == "tuple":
            return (logits,)
        return SimpleNamespace(logits=logits) if self.output == "object" else logits


def test_tuple_outputs_and_explicit_vocabularies() -> None:
    vocab = ConceptVocabulary.from_pairs([("a", "object"), ("b", "part")])
    segmenter = TransformersSegmenter(DuckModel(None, output="tuple"), vocabulary=vocab)
    assert checked_segment(segmenter, random_images()).shape == (2, 2, 16, 16)


def test_model_errors_are_named() -> None:
    with pytest.raises(
        ValueError, match=r"`config.id2label` mapping .* DuckModel has none. Pass `vocabulary`"
    ):
        TransformersSegmenter(DuckModel(None))
    segmenter = TransformersSegmenter(DuckModel({0: "sky", 1: "grass"}, output="tensor"))
    with pytest.raises(TypeError, match=r"an output with a `.logits` tensor .* but got Tensor"):
        segmenter.segment(random_images())
    with pytest.raises(ValueError, match="Expected argument `scales`"):
        TransformersSegmenter(DuckModel({0: "sky", 1: "grass"}), scales=(-1.0,))


# ------------------------------------------------------------------------------ vocabulary


def test_vocabulary_maps_ade20k_labels_and_defaults_others_to_object() -> None:
    vocab = vocabulary_from_id2label(
        {
            "0": "wall",
            "1": "windowpane;window",
            "2": "chest;of;drawers;chest;bureau;dresser",
            "3": "Grass",
            "4": " robot ",
            "5": "LABEL_5",
        }
    )
    assert [(c.name, c.category) for c in vocab] == [
        ("wall", "object"),
        ("windowpane", "part"),
        ("chest of drawers", "object"),
        ("grass", "material"),
        ("robot", "object"),
        ("LABEL_5", "object"),
    ]


@pytest.mark.parametrize(
    ("id2label", "message"),
    [
        ({}, "map the class indices 0 .. n-1"),
        ({0: "sky", 2: "tree"}, "map the class indices 0 .. n-1"),
        ({"a": "sky"}, "map the class indices 0 .. n-1"),
        ({0: "sky", 1: "  "}, "class 1 has '  '"),
        ({0: "sky", 1: "sky "}, "Expected unique concept names, but got duplicates ['sky']"),
    ],
)
def test_bad_id2label(id2label: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        vocabulary_from_id2label(id2label)


# ---------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("config", "mean", "std"),
    [
        ({}, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        (  # mmseg-style constants on unrescaled [0, 255] pixels: the same ImageNet statistics
            {
                "do_rescale": False,
                "image_mean": [123.675, 116.28, 103.53],
                "image_std": [58.395, 57.12, 57.375],
            },
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
        ),
        ({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, (0.5,) * 3, (0.5,) * 3),
        ({"image_mean": 0.5, "image_std": [0.25]}, (0.5,) * 3, (0.25,) * 3),
        ({"do_normalize": False}, (0.0,) * 3, (1.0,) * 3),
        ({"do_normalize": False, "do_rescale": False}, (0.0,) * 3, (1 / 255,) * 3),
        (
            {"rescale_factor": 1 / 127.5, "image_mean": [1, 1, 1], "image_std": [1, 1, 1]},
            (0.5,) * 3,
            (0.5,) * 3,
        ),
    ],
)
def test_processor_config_to_mean_and_std(
    config: dict[str, Any], mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found_mean, found_std = normalization_from_processor_config(config)
    assert found_mean == pytest.approx(mean, abs=1e-9) and found_std == pytest.approx(std, abs=1e-9)
    # The claim behind the formula: on pixels p = 255 x the processor and (x - mean) / std agree.
    settings = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, **config}
    if settings["do_normalize"]:
        x = torch.linspace(0, 1, 7)
        k = settings["rescale_factor"] if settings["do_rescale"] else 1.0
        m = settings.get("image_mean", [0.485, 0.456, 0.406])
        s = settings.get("image_std", [0.229, 0.224, 0.225])
        m0 = m if isinstance(m, float) else m[0]
        s0 = s[0] if isinstance(s, list) else s
        processor = (255 * x * k - m0) / s0
        assert torch.allclose(processor, (x - found_mean[0]) / found_std[0], atol=1e-4)


def test_inconsistent_processor_config_is_read_in_pixel_units_with_a_warning() -> None:
    config = {"image_mean": [123.675, 116.28, 103.53], "image_std": [58.395, 57.12, 57.375]}
    with pytest.warns(UserWarning, match=r"rescales pixels to \[0, 1\] but states image_mean"):
        mean, std = normalization_from_processor_config(config)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx(
        (0.229, 0.224, 0.225)
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"image_mean": [0.5, 0.5]}, "`image_mean` in the processor config to be 3 numbers"),
        ({"image_std": "abc"}, "`image_std` in the processor config to be 3 numbers"),
        ({"image_std": [0.5, 0.0, 0.5]}, "`image_std` in the processor config to be positive"),
        ({"rescale_factor": 0}, "`rescale_factor` in the processor config to be positive"),
        ({"rescale_factor": math.nan}, "`rescale_factor` in the processor config to be positive"),
    ],
)
def test_bad_processor_config(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalization_from_processor_config(config)


# ---------------------------------------------------------------------------------- loading


def save_tiny_model(directory: Path, processor: dict[str, Any] | None) -> nn.Module:
    model: Any = tiny_segformer()
    model.save_pretrained(directory)
    if processor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return model


def cached_snapshot(cache: Path, repo_id: str) -> Path:
    """The folder where the hub cache keeps ``repo_id``'s files at ``main``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    return repo / "snapshots" / "0123abcd"


def test_from_a_local_directory_with_its_processor_config(tmp_path: Path) -> None:
    processor = {"do_rescale": False, "image_mean": [127.5] * 3, "image_std": [63.75] * 3}
    model = save_tiny_model(tmp_path / "model", processor)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        segmenter = TransformersSegmenter.from_pretrained(tmp_path / "model", output_size=8)
    assert segmenter.vocabulary == ADE20K_VOCABULARY
    assert segmenter.module.mean.flatten().tolist() == [0.5] * 3
    assert segmenter.module.std.flatten().tolist() == [0.25] * 3
    images = random_images()
    expected = raw_logits(model, ((images + 1) / 2 - 0.5) / 0.25)
    expected = F.interpolate(expected, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(segmenter.logits(images), expected, atol=1e-5)


def test_from_the_hub_cache_by_name(tmp_path: Path) -> None:
    snapshot = cached_snapshot(tmp_path / "cache", "tiny-org/tiny-segformer")
    save_tiny_model(snapshot, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    segmenter = TransformersSegmenter.from_pretrained(
        "tiny-org/tiny-segformer", cache_dir=tmp_path / "cache", scales=(1.0, 2.0)
    )
    assert segmenter.module.mean.flatten().tolist() == [0.5] * 3
    assert segmenter.module.scales == (1.0, 2.0)
    checked_segment(segmenter, random_images(), soft=True)


def test_missing_processor_config_warns_and_uses_imagenet(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", None)
    with pytest.warns(UserWarning, match="no preprocessor_config.json .* ImageNet mean and std"):
        segmenter = TransformersSegmenter.from_pretrained(str(tmp_path / "model"))
    assert torch.allclose(segmenter.module.mean, IMAGENET_MEAN)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        given = TransformersSegmenter.from_pretrained(
            tmp_path / "model", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0)
        )
    assert given.module.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_a_name_missing_from_the_cache_gets_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    cache = tmp_path / "empty-cache"
    with pytest.raises(FileNotFoundError) as info:
        TransformersSegmenter.from_pretrained("no-such-org/no-such-model", cache_dir=cache)
    message = str(info.value)
    assert (
        "Expected the model 'no-such-org/no-such-model' in the local Hugging Face cache" in message
    )
    assert str(cache) in message and "local_files_only=True" in message
    assert "hf download no-such-org/no-such-model" in message
    assert not cache.exists() or not any(cache.iterdir())  # nothing was fetched


def test_a_missing_directory_or_weights_get_clear_errors(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match="the directory '/no/such/dir' does not exist"):
        TransformersSegmenter.from_pretrained("/no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        TransformersSegmenter.from_pretrained(tmp_path / "empty")
    save_tiny_model(tmp_path / "model", None)
    (tmp_path / "model" / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"Found the config of .* but could not load its weights"
    ):
        TransformersSegmenter.from_pretrained(tmp_path / "model")


def test_without_transformers_loading_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r'pip install "gan_dissect_callbacks\[transformers\]"'):
        TransformersSegmenter.from_pretrained("openmmlab/upernet-convnext-small")
    # An adapter around a model you built needs nothing more.
    checked_segment(TransformersSegmenter(DuckModel({0: "sky", 1: "grass"})), random_images())


def test_the_model_runs_at_the_segmenters_precision() -> None:
    model = tiny_segformer()
    full = TransformersSegmenter(model)
    half = TransformersSegmenter(model, precision="bf16-mixed")
    assert (full.precision, half.precision) == ("32-true", "bf16-mixed")
    images = random_images()
    expected = full.logits(images)
    assert torch.allclose(half.logits(images), expected, atol=0.05 * float(expected.abs().max()))
