"""ModuleSegmenter on tiny conv nets: exact masks, resizing, gradients, train/eval modes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dissect_callbacks.segmenters.base import Segmenter, checked_segment
from gan_dissect_callbacks.segmenters.module import ModuleSegmenter, resize_logits
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

VOCAB = ConceptVocabulary.from_pairs([("sky", "object"), ("tree", "object"), ("brick", "material")])


def identity_net() -> nn.Conv2d:
    """A 1x1 conv whose logits are the RGB values: concept c's logit is channel c."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1))
        conv.bias.zero_()  # type: ignore[union-attr]
    return conv.requires_grad_(False)


def random_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout2d(0.5),
        nn.Conv2d(8, 3, 3, stride=2, padding=1),
    )


def random_images(batch: int = 2, size: int = 8, seed: int = 1) -> Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# A 1x2 image whose pixels have logits (0.9, -0.2, 0.1) and (-1.0, 0.3, 0.3).
PIXELS = torch.tensor([[0.9, -1.0], [-0.2, 0.3], [0.1, 0.3]]).reshape(1, 3, 1, 2)


def test_multilabel_masks_and_probabilities_exactly() -> None:
    segmenter = ModuleSegmenter(identity_net(), VOCAB)
    scores = segmenter.soft_segment(PIXELS)
    assert torch.equal(scores, torch.sigmoid(PIXELS))
    # p > 0.5 <=> logit > 0
    expected = [[[[True, False]], [[False, True]], [[True, True]]]]
    assert segmenter.segment(PIXELS).tolist() == expected


def test_multilabel_threshold() -> None:
    # sigmoid(0.3) = 0.5744, sigmoid(0.9) = 0.7109: only the 0.9 pixel clears 0.6.
    masks = ModuleSegmenter(identity_net(), VOCAB, threshold=0.6).segment(PIXELS)
    assert masks.nonzero().tolist() == [[0, 0, 0, 0]]


def test_exclusive_masks_are_one_hot_argmax_and_scores_softmax() -> None:
    segmenter = ModuleSegmenter(identity_net(), VOCAB, multilabel=False)
    masks = segmenter.segment(PIXELS)
    # Pixel 0: sky (0.9) wins; pixel 1: tree and brick tie at 0.3, the first one wins.
    assert masks.tolist() == [[[[True, False]], [[False, True]], [[False, False]]]]
    scores = segmenter.soft_segment(PIXELS)
    e = [math.exp(v) for v in (0.9, -0.2, 0.1)]
    assert scores[0, :, 0, 0].tolist() == pytest.approx([v / sum(e) for v in e], abs=1e-6)
    assert torch.allclose(scores.sum(1), torch.ones(1, 1, 2))


def test_random_net_matches_a_pixel_by_pixel_reference() -> None:
    net = random_net()
    reference_net = copy.deepcopy(net).eval()
    images = random_images()
    vocab = VOCAB
    with torch.no_grad():
        logits = reference_net(images)
    for multilabel in (True, False):
        masks = ModuleSegmenter(net, vocab, multilabel=multilabel, threshold=0.4).segment(images)
        assert masks.shape == (2, 3, 4, 4)
        for b in range(2):
            for i in range(4):
                for j in range(4):
                    values = logits[b, :, i, j].tolist()
                    if multilabel:
                        want = [1 / (1 + math.exp(-v)) > 0.4 for v in values]
                    else:
                        want = [c == values.index(max(values)) for c in range(3)]
                    assert masks[b, :, i, j].tolist() == want


def test_output_size_resizes_logits_before_the_nonlinearity() -> None:
    net = identity_net()
    images = torch.tensor([[-1.0, 1.0]]).expand(3, 1, 2).reshape(1, 3, 1, 2) * 0.9
    segmenter = ModuleSegmenter(net, VOCAB, output_size=(1, 4))
    assert segmenter.segmentation_size((1, 2)) == (1, 4)
    scores = segmenter.soft_segment(images)
    resized = F.interpolate(images, size=(1, 4), mode="bilinear", align_corners=False)
    assert torch.equal(scores, torch.sigmoid(resized))
    # align_corners=False on a 2 -> 4 row: logits -0.9, -0.45, 0.45, 0.9.
    assert resized[0, 0, 0].tolist() == pytest.approx([-0.9, -0.45, 0.45, 0.9])
    # Resizing the probabilities instead would give different values in between.
    after = F.interpolate(torch.sigmoid(images), size=(1, 4), mode="bilinear", align_corners=False)
    assert not torch.allclose(scores, after)
    assert segmenter.segment(images)[0, 0, 0].tolist() == [False, False, True, True]


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((3, 150, 16, 16), (64, 64)),
        ((2, 150, 32, 32), (128, 128)),
        ((4, 21, 7, 5), (50, 33)),
        ((2, 12, 32, 32), (8, 8)),
    ],
)
def test_resize_logits_is_bilinear_and_the_same_for_each_image_at_any_batch(shape, size) -> None:
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    resized = resize_logits(logits, size)
    assert resized.shape == (shape[0], shape[1], *size)
    assert resized.is_contiguous(memory_format=torch.channels_last)
    reference = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    # Another order of the same additions: at most a rounding apart.
    assert torch.allclose(resized, reference, rtol=0, atol=4e-6)
    for i in range(shape[0]):
        assert torch.equal(resize_logits(logits[i : i + 1], size), resized[i : i + 1])


@pytest.mark.parametrize("multilabel", [False, True])
def test_exclusive_masks_resize_in_channels_last_and_the_rest_in_the_default_layout(
    multilabel,
) -> None:
    torch.manual_seed(0)
    net = nn.Conv2d(3, 40, 4, stride=4)  # logits at a quarter of the resolution
    segmenter = ModuleSegmenter(
        net,
        ConceptVocabulary.from_pairs([(f"c{i}", "object") for i in range(40)]),
        multilabel=multilabel,
        output_size=32,
    )
    images = random_images(batch=3, size=32)
    with torch.no_grad():
        raw = net(images)
    default = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
    logits = segmenter.logits(images)
    assert logits.is_contiguous() and torch.equal(logits, default)
    masks = segmenter.segment(images)
    assert masks.is_contiguous() and masks.dtype == torch.bool
    if multilabel:
        assert torch.equal(masks, torch.sigmoid(default) > 0.5)
    else:
        winner = resize_logits(raw, (32, 32)).argmax(dim=1)
        assert torch.equal(masks, F.one_hot(winner, 40).permute(0, 3, 1, 2).bool())
    probabilities = segmenter.soft_segment(images)
    nonlinearity = torch.sigmoid(default) if multilabel else torch.softmax(default, dim=1)
    assert probabilities.is_contiguous() and torch.equal(probabilities, nonlinearity)


class ChannelsLastAware(nn.Module):
    """Resizes its own logits, in channels_last layout when asked (records what it was asked)."""

    takes_channels_last = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bool] = []

    def forward(self, x: Tensor, channels_last: bool = False) -> Tensor:
        self.asked.append(channels_last)
        return resize_logits(x, (4, 4)) if channels_last else x.repeat_interleave(2, -1)[..., :4]


def test_only_exclusive_masks_resize_with_resize_logits(monkeypatch) -> None:
    import gan_dissect_callbacks.segmenters.module as module

    calls = []

    def spy(logits: Tensor, size: tuple[int, int]) -> Tensor:
        calls.append(size)
        return resize_logits(logits, size)

    monkeypatch.setattr(module, "resize_logits", spy)
    images = random_images(size=4)
    exclusive = ModuleSegmenter(identity_net(), VOCAB, multilabel=False, output_size=8)
    multilabel = ModuleSegmenter(identity_net(), VOCAB, output_size=8)
    exclusive.logits(images), exclusive.soft_segment(images)
    multilabel.segment(images), multilabel.soft_segment(images)
    assert calls == []
    exclusive.segment(images)
    assert calls == [(8, 8)]


def test_a_subclass_that_overrides_logits_gets_masks_from_them() -> None:
    class Biased(ModuleSegmenter):
        def logits(self, images: Tensor) -> Tensor:
            out = super().logits(images)
            return out + torch.tensor([0.0, 0.0, 10.0]).reshape(1, 3, 1, 1)

    masks = Biased(identity_net(), VOCAB, multilabel=False, output_size=8).segment(
        random_images(size=4)
    )
    assert bool(masks[:, 2].all())


def test_a_module_that_takes_channels_last_is_asked_for_it_by_exclusive_masks_only() -> None:
    module = ChannelsLastAware()
    images = random_images(size=4)
    exclusive = ModuleSegmenter(module, VOCAB, multilabel=False)
    exclusive.segment(images)
    exclusive.soft_segment(images)
    exclusive.logits(images)
    ModuleSegmenter(module, VOCAB).segment(images)  # multi-label
    assert module.asked == [True, False, False, False]


def test_square_output_size_from_an_int() -> None:
    segmenter = ModuleSegmenter(identity_net(), VOCAB, output_size=6)
    assert segmenter.segment(random_images(size=3)).shape == (2, 3, 6, 6)


def test_input_transform_maps_images_before_the_module() -> None:
    segmenter = ModuleSegmenter(identity_net(), VOCAB, input_transform=lambda x: (x + 1) / 2)
    assert torch.equal(segmenter.logits(PIXELS), (PIXELS + 1) / 2)


def test_segment_has_no_graph_and_soft_segment_passes_gradients_to_images() -> None:
    segmenter = ModuleSegmenter(identity_net(), VOCAB)
    images = PIXELS.clone().requires_grad_(True)
    assert not segmenter.segment(images).requires_grad
    scores = segmenter.soft_segment(images)
    assert scores.requires_grad
    scores.sum().backward()
    assert images.grad is not None
    p = torch.sigmoid(PIXELS)
    assert torch.allclose(images.grad, p * (1 - p))


def test_modes_and_batchnorm_statistics_are_untouched() -> None:
    net = random_net().train()
    net[3].eval()  # a part deliberately in eval mode inside a training model stays so
    modes = [m.training for m in net.modules()]
    state = copy.deepcopy(net.state_dict())
    segmenter = ModuleSegmenter(net, VOCAB)
    images = random_images()

    first = segmenter.soft_segment(images)
    second = segmenter.soft_segment(images)
    segmenter.segment(images)
    segmenter.segmentation_size((8, 8))

    assert [m.training for m in net.modules()] == modes
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    # Eval mode during the pass: dropout off, so two passes agree and match the eval net.
    assert torch.equal(first, second)
    with torch.no_grad():
        expected = torch.sigmoid(copy.deepcopy(net).eval()(images))
    assert torch.equal(first.detach(), expected)


def test_modes_are_restored_when_the_module_raises() -> None:
    class Failing(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            assert not self.training
            raise RuntimeError("boom")

    net = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        ModuleSegmenter(net, VOCAB).segment(PIXELS)
    assert net.training


def test_segmentation_size_probes_the_module_once_per_image_size() -> None:
    calls: list[tuple[int, ...]] = []
    net = random_net().double()
    net.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    segmenter = ModuleSegmenter(net, VOCAB)
    assert segmenter.segmentation_size((8, 6)) == (4, 3)
    assert segmenter.segmentation_size((8, 6)) == (4, 3)
    assert segmenter.segmentation_size((16, 16)) == (8, 8)
    assert calls == [(1, 3, 8, 6), (1, 3, 16, 16)]
    assert checked_segment(segmenter, random_images().double()).shape == (2, 3, 4, 4)


def test_segmentation_size_does_not_run_the_module_with_an_output_size() -> None:
    net = nn.Conv2d(3, 3, 1)
    net.register_forward_pre_hook(lambda _m, _a: pytest.fail("the module ran"))
    assert ModuleSegmenter(net, VOCAB, output_size=(5, 7)).segmentation_size((64, 64)) == (5, 7)


def test_checked_segment_accepts_module_segmenter_outputs() -> None:
    segmenter = ModuleSegmenter(random_net(), VOCAB, output_size=(8, 8), multilabel=False)
    assert isinstance(segmenter, Segmenter)
    masks = checked_segment(segmenter, random_images())
    assert masks.shape == (2, 3, 8, 8)
    assert torch.equal(masks.sum(1), torch.ones(2, 8, 8, dtype=torch.long))
    scores = checked_segment(segmenter, random_images(), soft=True)
    assert torch.allclose(scores.sum(1), torch.ones(2, 8, 8))


class DictOutput(nn.Module):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": x}


@pytest.mark.parametrize(
    ("module", "error", "match"),
    [
        (nn.Conv2d(3, 4, 1), ValueError, r"\[B=1, C=3, h, w\].*shape \[1, 4, 1, 2\]"),
        (nn.Flatten(), ValueError, r"shape \[1, 6\]"),
        (DictOutput(), TypeError, r"got dict\. Wrap a model that returns a dict"),
    ],
)
def test_wrong_module_outputs_fail_clearly(module: nn.Module, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ModuleSegmenter(module, VOCAB).segment(PIXELS)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"threshold": 1.5},
            ValueError,
            r"^Expected argument `threshold` to be a float in \(0, 1\), but got 1\.5\.$",
        ),
        ({"threshold": 0.0}, ValueError, r"in \(0, 1\), but got 0\.0"),
        ({"module": lambda x: x}, TypeError, "`module` to be an nn.Module, but got function"),
        ({"vocabulary": ("sky",)}, TypeError, "`vocabulary` to be a ConceptVocabulary"),
        ({"multilabel": 1}, TypeError, "`multilabel` to be a bool, but got 1"),
        ({"input_transform": "normalize"}, TypeError, "`input_transform` to be callable"),
        ({"output_size": (8, 0)}, ValueError, r"`output_size` to be a pair of positive ints"),
        ({"output_size": 0}, ValueError, r"`output_size` to be a pair of positive ints"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    arguments = {"module": identity_net(), "vocabulary": VOCAB, **kwargs}
    module = arguments.pop("module")
    vocabulary = arguments.pop("vocabulary")
    with pytest.raises(error, match=match):
        ModuleSegmenter(module, vocabulary, **arguments)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_module_gets_images_in_its_dtype(dtype) -> None:
    net = random_net().eval()
    images = random_images(size=16)
    reference = ModuleSegmenter(net, VOCAB).soft_segment(images)
    half = ModuleSegmenter(copy.deepcopy(net).to(dtype), VOCAB)
    scores = half.soft_segment(images)  # float32 images, a half module: cast, not an error
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, reference, atol=0.05)
    assert checked_segment(half, images.to(dtype)).shape == (2, 3, 8, 8)


def test_masks_do_not_depend_on_an_autocast_region_around_the_analysis() -> None:
    segmenter = ModuleSegmenter(random_net().eval(), VOCAB)
    images = random_images(size=16)
    plain = segmenter.logits(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = segmenter.logits(images)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_checked_segment_hands_float32_images_to_any_segmenter() -> None:
    seen: list[torch.dtype] = []

    class Recording(ModuleSegmenter):
        def segment(self, images: Tensor) -> Tensor:
            seen.append(images.dtype)
            return super().segment(images)

    checked_segment(Recording(identity_net(), VOCAB), random_images().bfloat16())
    assert seen == [torch.float32]


class AutocastProbe(nn.Module):
    """``identity_net``'s logits, recording the autocast state its forward pass runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.net = identity_net()
        self.seen: list[torch.dtype | None] = []

    def forward(self, x: Tensor) -> Tensor:
        on = torch.is_autocast_enabled("cpu")
        self.seen.append(torch.get_autocast_dtype("cpu") if on else None)
        return self.net(x)


@pytest.mark.parametrize(
    ("precision", "expected"),
    [("32-true", None), ("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)],
)
def test_the_module_runs_at_the_segmenters_own_precision(precision, expected) -> None:
    probe = AutocastProbe()
    segmenter = ModuleSegmenter(probe, VOCAB, precision=precision)
    images = random_images()
    logits = segmenter.logits(images)
    # Whatever region the analysis is called in, the segmenter's precision is its own.
    with torch.autocast("cpu", dtype=torch.float16 if expected is None else torch.bfloat16):
        inside = segmenter.logits(images)
    assert probe.seen == [expected, expected]
    assert logits.dtype == inside.dtype == torch.float32  # thresholds read float32 logits
    assert torch.equal(logits, inside)
    exact = expected is None
    assert torch.equal(logits, images) if exact else torch.allclose(logits, images, atol=1e-2)


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_precision_takes_bf16_only_where_the_device_computes_it_natively(
    monkeypatch, native, expected
) -> None:
    import gan_dissect_callbacks.segmenters.module as module

    asked: list[torch.device] = []
    monkeypatch.setattr(module, "native_bf16", lambda device: asked.append(device) or native)
    probe = AutocastProbe()
    ModuleSegmenter(probe, VOCAB, precision="auto").segment(random_images())
    assert probe.seen == [expected]
    assert asked == [torch.device("cpu")]


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(0, 0, False), (1, 0, True), (0, 1, True)]
)
def test_a_cpu_computes_bf16_natively_with_avx512_bf16_or_amx(
    monkeypatch, avx512_bf16, amx, expected
) -> None:
    from gan_dissect_callbacks.segmenters.module import native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bool(avx512_bf16))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: bool(amx))
    assert native_bf16("cpu") is expected
    assert native_bf16("meta") is False


def test_bf16_masks_agree_with_float32_but_where_a_logit_is_within_rounding() -> None:
    net = random_net().eval().requires_grad_(False)
    images = random_images(batch=16, size=32)
    full = ModuleSegmenter(net, VOCAB).logits(images)
    half = ModuleSegmenter(net, VOCAB, precision="bf16-mixed").logits(images)
    assert half.dtype == torch.float32
    scale = full.abs().max()
    assert float((half - full).abs().max()) < 0.02 * float(scale)
    flipped = (half > 0) != (full > 0)
    assert bool((full[flipped].abs() < 0.02 * scale).all())  # only near the threshold


def test_an_unknown_precision_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"`precision`.*'32-true', 'bf16-mixed', '16-mixed', 'auto'"
    ):
        ModuleSegmenter(identity_net(), VOCAB, precision="bf16")  # type: ignore[arg-type]
