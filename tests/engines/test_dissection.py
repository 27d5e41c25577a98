"""The dissection engine: exact against brute force, harmless, clear on bad input."""

import json

import pytest
import torch
from torch import nn

from gan_dissect_callbacks.engines.dissection import DissectionReport, UnitExamples, dissect
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.engines.sampling import iterate_samples, resolve_latent_sampler
from gan_dissect_callbacks.functional.upsample import upsample_activations
from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
from tests.engines.synthetic import VOCABULARY, PaintingGenerator, exact_segmenter


def all_activations(model, num_samples, batch_size, seed):
    sampler = resolve_latent_sampler(model)
    acts, images = [], []
    with torch.no_grad():
        for batch in iterate_samples(sampler, num_samples, batch_size, seed=seed):
            acts.append(model.features(batch.latents))
            images.append(model(batch.latents))
    return torch.cat(acts), torch.cat(images)


@pytest.fixture(scope="module")
def model():
    return PaintingGenerator(extra=2).eval()


@pytest.mark.parametrize("rule", ["quantile", "iqr"])
def test_units_that_paint_a_concept_are_labelled_with_it(model, rule):
    report = dissect(
        model, ["features"], exact_segmenter(), num_samples=96, batch_size=32, rule=rule, top_k=3
    )
    layer = report.layers["features"]
    assert [u.concept for u in layer.units[:3]] == ["red", "green", "blue"]
    assert all(u.interpretable for u in layer.units[:3])
    if rule == "iqr":
        # The IQR rule finds the indicator's edge: most of the concept, little else.
        assert min(u.iou for u in layer.units[:3]) > 0.5
    assert layer.counts_by_category(VOCABULARY.categories) == {
        "object": 1,
        "part": 1,
        "material": 1,
    }


def test_iou_equals_brute_force_at_the_reported_thresholds(model):
    n, bs, seed = 80, 24, 3
    report = dissect(
        model, ["features"], exact_segmenter(), num_samples=n, batch_size=bs, seed=seed
    )
    acts, images = all_activations(model, n, bs, seed)
    masks = images > 0  # [N, 3, 32, 32]
    up = upsample_activations(acts, (32, 32))  # [N, U, 32, 32]
    layer = report.layers["features"]
    thresholds = torch.tensor([u.threshold for u in layer.units]).view(1, -1, 1, 1)
    unit_masks = up > thresholds
    inter = torch.einsum("nuhw,nchw->uc", unit_masks.double(), masks.double())
    union = unit_masks.sum((0, 2, 3)).double().view(-1, 1) + masks.sum((0, 2, 3)).double() - inter
    expected = inter / union.clamp(min=1)
    assert torch.allclose(torch.tensor(layer.iou, dtype=torch.double), expected, atol=1e-6)


def test_top_samples_are_the_largest_spatial_maxima(model):
    n, bs, k = 70, 16, 4
    report = dissect(model, ["features"], exact_segmenter(), num_samples=n, batch_size=bs, top_k=k)
    acts, _ = all_activations(model, n, bs, 0)
    peaks = acts.amax(dim=(2, 3))  # [N, U]
    for u in report.layers["features"].units:
        expected = peaks[:, u.unit].topk(k).values
        assert torch.allclose(torch.tensor(u.top_activations), expected)
        assert torch.allclose(peaks[u.top_samples, u.unit], expected)


def test_several_layers_share_one_forward_and_segmenter_pass(model):
    calls = []
    seg = exact_segmenter()
    counting = GroundTruthSegmenter(VOCABULARY, lambda x: calls.append(len(x)) or x > 0)
    report = dissect(model, ["features", "scale"], counting, num_samples=40, batch_size=20)
    assert calls == [20, 20]
    assert set(report.layers) == {"features", "scale"}
    assert seg.vocabulary == report.vocabulary


def test_report_round_trips_through_json(model, tmp_path):
    report = dissect(model, ["features"], exact_segmenter(), num_samples=32, batch_size=16, step=7)
    path = tmp_path / "r.json"
    text = report.to_json()
    path.write_text(text)
    assert json.loads(text)["step"] == 7
    again = DissectionReport.from_json(path)
    assert again == report
    assert again.summary() == report.summary() == "features: 5 units, 1 object, 1 part, 1 material"


def test_dissection_is_harmless(model):
    model.train()
    model.scale.eval()  # a mixed-mode module must come back exactly as it was
    bn_before = {k: v.clone() for k, v in model.scale.state_dict().items()}
    rng_before = torch.get_rng_state()
    dissect(model, ["features"], exact_segmenter(), num_samples=16, batch_size=8)
    assert model.training
    assert not model.scale.training
    assert torch.equal(torch.get_rng_state(), rng_before)
    for k, v in model.scale.state_dict().items():
        assert torch.equal(v, bn_before[k])
    assert not model.features._forward_hooks
    model.eval()


def test_harmless_also_when_the_segmenter_raises(model):
    def broken(images):
        raise RuntimeError("segmenter exploded")

    model.train()
    rng_before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="exploded"):
        dissect(model, ["features"], GroundTruthSegmenter(VOCABULARY, broken), num_samples=8)
    assert model.training
    assert not model.features._forward_hooks
    assert torch.equal(torch.get_rng_state(), rng_before)
    model.eval()


def test_unknown_layer_lists_valid_names(model):
    with pytest.raises(ValueError, match="features"):
        dissect(model, ["featurez"], exact_segmenter(), num_samples=8)


def test_non_featuremap_layer_is_refused():
    model = nn.Sequential(nn.Linear(4, 3 * 32 * 32), nn.Tanh(), nn.Unflatten(1, (3, 32, 32)))
    with pytest.raises(ValueError, match="featuremap"):
        dissect(AnalysedGenerator(model, latent_dim=4), ["0"], exact_segmenter(), num_samples=8)


def test_missing_latent_sampler_names_the_fix():
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="sample_latents"):
        dissect(model, ["0"], exact_segmenter(), num_samples=8)


def test_wrong_segmenter_output_is_refused(model):
    wrong = GroundTruthSegmenter(VOCABULARY, lambda x: (x > 0)[:, :2])
    with pytest.raises(ValueError, match="concept"):
        dissect(model, ["features"], wrong, num_samples=8)


def test_nan_activations_are_refused(model):
    class NaNGenerator(PaintingGenerator):
        def forward(self, z):
            out = super().forward(z)
            return out

    bad = NaNGenerator()
    bad.features.register_forward_hook(lambda m, i, o: o * float("nan"))
    with pytest.raises(ValueError, match=r"(?i)nan"):
        dissect(bad, ["features"], exact_segmenter(), num_samples=8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"rule": "median"}, "rule"),
        ({"quantile": 1.5}, "quantile"),
        ({"top_k": -1}, "top_k"),
        ({"top_n": -1}, "top_n"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_named(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dissect(model, ["features"], exact_segmenter(), **kwargs)


def test_examples_are_the_gallery_units_top_samples_redrawn_by_brute_force(model):
    n, bs, k, top_n = 50, 16, 3, 4
    report = dissect(
        model, ["features"], exact_segmenter(), num_samples=n, batch_size=bs, top_k=k, top_n=top_n
    )
    acts, images = all_activations(model, n, bs, 0)
    layer = report.layers["features"]
    chosen = sorted(layer.units, key=lambda u: (not u.interpretable, -u.iou))[:top_n]
    examples = report.examples["features"]
    assert [e.unit for e in examples] == [u.unit for u in chosen]
    for u, e in zip(chosen, examples, strict=True):
        assert isinstance(e, UnitExamples)
        assert e.images.dtype == torch.float32 and e.images.device.type == "cpu"
        assert torch.equal(e.images, images[u.top_samples])
        up = upsample_activations(acts[u.top_samples, u.unit : u.unit + 1], (32, 32))[:, 0]
        assert e.masks.dtype == torch.bool and e.masks.shape == (k, 32, 32)
        assert torch.equal(e.masks, up > u.threshold)


def test_examples_are_left_out_of_json_equality_and_repr(model):
    plain = dissect(model, ["features"], exact_segmenter(), num_samples=16, batch_size=8, top_k=2)
    shown = dissect(
        model, ["features"], exact_segmenter(), num_samples=16, batch_size=8, top_k=2, top_n=2
    )
    assert plain.examples == {} and len(shown.examples["features"]) == 2
    assert shown == plain
    assert shown.to_json() == plain.to_json()
    assert repr(shown) == repr(plain)
    assert DissectionReport.from_json(shown.to_json()).examples == {}
    # Without top samples there is nothing to show.
    none = dissect(
        model, ["features"], exact_segmenter(), num_samples=16, batch_size=8, top_k=0, top_n=2
    )
    assert none.examples == {}


def test_an_analysed_generator_is_dissected_like_its_module(model):
    wrapped = AnalysedGenerator(model)
    a = dissect(wrapped, ["features"], exact_segmenter(), num_samples=16, batch_size=8)
    b = dissect(model, ["features"], exact_segmenter(), num_samples=16, batch_size=8)
    assert a == b
