"""Tests of the discriminator score and of FID with a user-supplied feature extractor."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gan_dissect_callbacks.metrics.quality import DiscriminatorScore, make_fid

# --- DiscriminatorScore ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=4, max_size=4),
        min_size=1,
        max_size=5,
    ),
    patch=st.booleans(),
    apply_sigmoid=st.booleans(),
)
def test_score_is_the_mean_over_images_of_each_image_mean_output(
    batches: list[list[float]], patch: bool, apply_sigmoid: bool
) -> None:
    metric = DiscriminatorScore(apply_sigmoid=apply_sigmoid)
    per_image = []
    for values in batches:
        if patch:  # a patch discriminator: one [1, 2, 2] logit map per image, a batch of 1
            metric.update(torch.tensor(values).view(1, 1, 2, 2))
            squashed = [1 / (1 + math.exp(-v)) if apply_sigmoid else v for v in values]
            per_image.append(sum(squashed) / 4)
        else:  # one logit per image, [B, 1]
            metric.update(torch.tensor(values).view(4, 1))
            per_image += [1 / (1 + math.exp(-v)) if apply_sigmoid else v for v in values]
    assert metric.compute().item() == pytest.approx(sum(per_image) / len(per_image), abs=1e-6)


def test_score_states_merge_exactly_across_processes() -> None:
    scores = torch.randn(10, generator=torch.Generator().manual_seed(0))
    whole, part_a, part_b = DiscriminatorScore(), DiscriminatorScore(), DiscriminatorScore()
    whole.update(scores)
    part_a.update(scores[:3])
    part_b.update(scores[3:])
    part_a.merge_state(part_b)
    torch.testing.assert_close(part_a.compute(), whole.compute())
    torch.testing.assert_close(whole.compute(), scores.double().mean().float())


def test_score_is_detached_from_the_graph() -> None:
    logits = torch.randn(4, requires_grad=True)
    metric = DiscriminatorScore()
    metric.update(logits * 2)
    assert not metric.score_sum.requires_grad


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.tensor([1, 2]), TypeError, r"`scores` to be a float tensor, but got a torch.int64"),
        (torch.tensor(0.5), ValueError, r"shape \[B\] or \[B, ...\] .* but got \[\]"),
        (torch.zeros(0), ValueError, r"but got \[0\]"),
        (torch.tensor([0.0, float("inf")]), ValueError, r"finite values, but got NaN/Inf"),
    ],
)
def test_score_rejects_bad_input(scores: torch.Tensor, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DiscriminatorScore().update(scores)


def test_score_without_updates_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"`apply_sigmoid` to be a bool, but got 'yes'"):
        DiscriminatorScore(apply_sigmoid="yes")  # type: ignore[arg-type]
    with (
        pytest.warns(UserWarning, match="before the ``update``"),
        pytest.raises(
            RuntimeError, match=r"at least one score .*`update\(discriminator\(fake_images\)\)"
        ),
    ):
        DiscriminatorScore().compute()


# --- FID ------------------------------------------------------------------------------------------


def _extractor(seed: int = 0, batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, stride=2)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.Conv2d(8, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def _images(n: int = 48) -> torch.Tensor:
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5
    return F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)


def _fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    fid = make_fid(_extractor())
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return fid.compute().item()


def test_fid_is_zero_for_identical_sets_and_grows_with_a_brightness_shift() -> None:
    real = _images()
    same, slight, strong = _fid(real, real), _fid(real, real + 0.05), _fid(real, real + 0.3)
    assert abs(same) < 1e-3
    assert 0 < slight < strong


def test_fid_needs_neither_torch_fidelity_nor_scipy() -> None:
    # Both are absent from the project's environment; the custom-extractor path must not need them.
    missing = [m for m in ("torch_fidelity", "scipy") if importlib.util.find_spec(m) is None]
    if len(missing) < 2:
        pytest.skip(
            f"only meaningful where torch_fidelity and scipy are absent; missing: {missing}"
        )
    assert _fid(_images(8), _images(8) + 0.1) > 0


def test_fid_feeds_the_extractor_unit_range_images() -> None:
    seen: list[tuple[float, float]] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((x.min().item(), x.max().item()))
            return x.mean(dim=(2, 3))

    fid = make_fid(Recorder(), num_features=3)
    assert seen == []  # num_features given: no probe pass
    images = torch.zeros(2, 3, 16, 16)
    images[0], images[1] = -1.0, 1.0
    fid.update(images, real=True)
    assert seen == [(0.0, 1.0)]


def test_fid_probes_feature_count_without_touching_the_global_rng() -> None:
    extractor = _extractor()  # building modules draws initial weights from the global RNG
    state = torch.random.get_rng_state()
    fid = make_fid(extractor, input_img_size=(3, 16, 16))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert fid.inception.num_features == 6
    assert fid.real_features_sum.shape == (6,)


def test_fid_leaves_a_shared_extractor_exactly_as_it_was() -> None:
    extractor = _extractor(batch_norm=True).train()
    batch_norm = extractor[1]
    assert isinstance(batch_norm, nn.BatchNorm2d)
    assert batch_norm.running_mean is not None
    running_mean = batch_norm.running_mean.clone()
    fid = make_fid(extractor)
    images = _images(8).requires_grad_(True)
    fid.update(images, real=True)
    fid.eval()
    fid.update(images, real=False)
    fid.train()
    assert all(m.training for m in extractor.modules())
    assert torch.equal(batch_norm.running_mean, running_mean)
    assert all(p.grad is None for p in extractor.parameters())
    extractor.eval()
    fid.train()
    assert not any(m.training for m in extractor.modules())


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (
            torch.full((2, 3, 32, 32), 1.5),
            r"`imgs` to have values in \[-1, 1\], but got values in \[1.5, 1.5\]",
        ),
        (
            torch.zeros(2, 32, 32),
            r"float tensor \[B, C, H, W\], but got a torch.float32 tensor of shape \[2, 32, 32\]",
        ),
        (torch.full((2, 3, 32, 32), float("nan")), r"finite values, but got NaN/Inf"),
    ],
)
def test_fid_rejects_bad_images(images: torch.Tensor, match: str) -> None:
    fid = make_fid(_extractor())
    with pytest.raises(ValueError, match=match):
        fid.update(images, real=True)


def test_fid_rejects_bad_extractors_and_arguments() -> None:
    with pytest.raises(
        TypeError, match=r"`feature_extractor` to be a torch.nn.Module, but got function"
    ):
        make_fid(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \[B, d\], but got \[1, 8, 7, 7\]"):
        make_fid(nn.Conv2d(3, 8, 3, stride=2), input_img_size=(3, 16, 16))
    with pytest.raises(ValueError, match=r"`num_features` to be an int ≥ 1, but got 0"):
        make_fid(_extractor(), num_features=0)
    with pytest.raises(ValueError, match=r"Expected no \['normalize'\] in the keyword arguments"):
        make_fid(_extractor(), normalize=False)
    with pytest.raises(ValueError, match=r"`input_img_size` to be a tuple \(C, H, W\)"):
        make_fid(_extractor(), input_img_size=(32, 32))  # type: ignore[arg-type]
    fid = make_fid(_extractor(), num_features=5)  # the extractor returns 6
    with pytest.raises(ValueError, match=r"\[B, num_features\] = \[2, 5\], but got \[2, 6\]"):
        fid.update(_images(2), real=True)
