"""A bf16 or fp16 generator, or an autocast region around the analysis: the same answers as float32
within the precision's tolerance (images reach the segmenter in its dtype; counts are exact)."""

from __future__ import annotations

import copy

import pytest
import torch

from gan_dissect_callbacks.demos.pretrained import load_pretrained_scene_gan
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.engines import AnalysedGenerator, dissect, removal_curve

LAYERS = ["layer2", "layer3"]
KW = {"num_samples": 128, "batch_size": 64, "top_k": 0}


@pytest.fixture(scope="module")
def setup():
    gan = load_pretrained_scene_gan().eval()
    segmenter = load_toy_segmenter()
    reference = dissect(AnalysedGenerator.of(gan, "generator"), LAYERS, segmenter, **KW)
    return gan, segmenter, reference


def assert_close_reports(got, reference):
    for layer in LAYERS:
        a = torch.tensor(reference.layers[layer].iou)
        b = torch.tensor(got.layers[layer].iou)
        assert float((a - b).abs().max()) < 0.02, layer
        same = sum(x == y for x, y in zip(reference.labels(layer), got.labels(layer)))
        assert same / len(a) >= 0.95, layer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_generator_dissects_like_float32(setup, dtype):
    gan, segmenter, reference = setup
    half = AnalysedGenerator.of(gan, copy.deepcopy(gan.generator).to(dtype))
    assert_close_reports(dissect(half, LAYERS, segmenter, **KW), reference)


def test_an_autocast_region_around_the_analysis_changes_little(setup):
    gan, segmenter, reference = setup
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dissect(AnalysedGenerator.of(gan, "generator"), LAYERS, segmenter, **KW)
    assert_close_reports(got, reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_generator_intervenes_like_float32(setup, dtype):
    gan, segmenter, reference = setup
    ranking = sorted(range(32), key=lambda u: -reference.layers["layer3"].iou[u][2])  # sun
    args = ("layer3", segmenter, "sun", ranking)
    kw = {"max_units": 3, "num_random": 0, "num_samples": 32}
    full = removal_curve(AnalysedGenerator.of(gan, "generator"), *args, **kw)
    half = removal_curve(
        AnalysedGenerator.of(gan, copy.deepcopy(gan.generator).to(dtype)), *args, **kw
    )
    assert max(abs(a - b) for a, b in zip(full.removed, half.removed)) < 0.05
