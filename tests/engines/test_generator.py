"""AnalysedGenerator: the module that runs, its layer names, its latents, the harmless context."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.engines.generator import AnalysedGenerator, featuremap_shape
from gan_dissect_callbacks.instrumentation import UnitEdit


@pytest.fixture
def gan() -> SceneGAN:
    torch.manual_seed(0)
    return SceneGAN(latent_dim=8, width=4, image_size=16)


def test_wrap_keeps_an_analysed_generator_and_wraps_a_module(gan):
    g = AnalysedGenerator.wrap(gan)
    assert g.module is gan and g.generate is gan
    assert AnalysedGenerator.wrap(g) is g


def test_of_none_is_the_module_itself_with_its_dotted_names(gan):
    g = AnalysedGenerator.of(gan)
    assert g.module is gan
    assert "generator.layer3" in g.layer_names()
    assert g.resolve_layer("generator.layer3") is gan.generator.layer3


def test_of_an_attribute_name_resolves_layers_against_that_submodule(gan):
    gan.generator_ema = copy.deepcopy(gan.generator)
    g = AnalysedGenerator.of(gan, "generator_ema")
    assert g.module is gan.generator_ema
    assert g.resolve_layer("layer3") is gan.generator_ema.layer3
    # latents come from the LightningModule, which knows latent_dim; the EMA copy does not
    z = g.latents(3, seed=1)
    assert torch.equal(z, gan.sample_latents(3, generator=torch.Generator().manual_seed(1)))


def test_of_a_module_outside_lists_its_own_names_for_an_unknown_layer(gan):
    ema = copy.deepcopy(gan.generator)
    g = AnalysedGenerator.of(gan, ema)
    with pytest.raises(ValueError, match=r"Unknown layer 'generator\.layer3'") as info:
        g.resolve_layer("generator.layer3")
    assert "layer3" in str(info.value) and "Did you mean 'layer3'" in str(info.value)


def test_of_an_unknown_attribute_lists_the_modules_names(gan):
    with pytest.raises(ValueError, match="Unknown layer 'generator_emma'"):
        AnalysedGenerator.of(gan, "generator_emma")
    with pytest.raises(TypeError, match="Expected argument `generator`"):
        AnalysedGenerator.of(gan, 3)  # type: ignore[arg-type]


def test_run_captures_after_edits_and_matches_the_plain_forward(gan):
    g = AnalysedGenerator.wrap(gan)
    z = g.latents(2, seed=0)
    with g.harmless():
        images, acts = g.run(z, capture=["generator.layer2"])
        plain = gan(z)
        units = acts["generator.layer2"].shape[1]
        _, edited = g.run(
            z,
            capture=["generator.layer2"],
            edits={"generator.layer2": UnitEdit.ablation([0], units)},
        )
    assert torch.equal(images, plain)
    assert edited["generator.layer2"][:, 0].abs().max() == 0
    assert torch.equal(edited["generator.layer2"][:, 1:], acts["generator.layer2"][:, 1:])


def test_run_names_a_layer_that_does_not_run_while_generating(gan):
    g = AnalysedGenerator.wrap(gan)
    with pytest.raises(ValueError, match=r"'discriminator\.main\.0'.*did not run"):
        g.run(g.latents(1, seed=0), capture=["discriminator.main.0"])


def test_harmless_restores_modes_rng_and_grad(gan):
    gan.train()
    gan.generator.layer1.eval()  # a submodule deliberately in eval mode stays so
    g = AnalysedGenerator.wrap(gan)
    before = torch.random.get_rng_state()
    modes = [m.training for m in gan.modules()]
    with g.harmless():
        assert not any(m.training for m in gan.modules())
        assert not torch.is_grad_enabled()
        torch.randn(5)  # advances the forked stream only
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [m.training for m in gan.modules()] == modes
    with g.harmless(grad=True):
        assert torch.is_grad_enabled()


def test_harmless_also_puts_an_outside_module_in_eval_mode(gan):
    outside = nn.Sequential(nn.Dropout()).train()
    with AnalysedGenerator.wrap(gan).harmless(also=[outside, "not a module"]):
        assert not outside.training
    assert outside.training


def test_featuremap_shape_and_its_error(gan):
    g = AnalysedGenerator.wrap(gan)
    units, h, w = g.featuremap_shape("generator.layer2")
    _, acts = g.run(g.latents(1, seed=0), capture=["generator.layer2"])
    assert (units, h, w) == tuple(acts["generator.layer2"].shape[1:])
    with pytest.raises(ValueError, match=r"layer 'x' to output a featuremap \[B, U, h, w\]"):
        featuremap_shape("x", torch.zeros(2, 3))


def test_samples_and_latents_for_agree(gan):
    g = AnalysedGenerator.wrap(gan)
    whole = torch.cat([b.latents for b in g.samples(7, 3, seed=2)])
    assert torch.equal(g.latents_for([6, 1], 7, 3, seed=2), whole[[6, 1]])


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match=r"Expected the generator to be an nn\.Module"):
        AnalysedGenerator(lambda z: z)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Expected argument `generate`"):
        AnalysedGenerator(nn.Linear(2, 2), generate=3, latent_dim=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Cannot tell how to sample latents"):
        AnalysedGenerator(nn.Linear(2, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_generator_gets_latents_in_its_precision(gan, dtype):
    half = AnalysedGenerator.of(gan, copy.deepcopy(gan.generator).to(dtype))
    z = half.latents(2, seed=0)
    assert z.dtype == torch.float32  # samplers draw float32
    images, acts = half.run(z, capture=["layer2"])
    assert images.dtype == dtype and acts["layer2"].dtype == dtype
    with torch.no_grad():
        reference = gan.generator(z)
    assert torch.allclose(images.float(), reference, atol=0.1)
