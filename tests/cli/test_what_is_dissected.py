"""gan-dissect dissects what training had: an EMA generator by name, the saved pruning mask."""

import pytest

from gan_dissect_callbacks.cli import main
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.pretrained import load_pretrained_scene_gan
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.engines.artifacts.pruning import MASK_STATE_KEY, PruningMask
from gan_dissect_callbacks.engines.dissection import DissectionReport, dissect
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from tests.cli.models import EMASceneGAN, save_checkpoint

SMALL = ["--num-samples", "24", "--batch-size", "12", "--top-k", "2", "--top-n", "0"]
KWARGS = {"num_samples": 24, "batch_size": 12, "top_k": 2}
LAYERS = ["generator.layer2", "generator.layer3"]


def written(out, step=0):
    return DissectionReport.from_json(out / "dissection" / f"step_{step:07d}.json")


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory):
    """An EMA copy holding the trained toy generator, beside an untrained generator."""
    trained = load_pretrained_scene_gan()
    model = EMASceneGAN(**trained.hparams)
    model.generator_ema.load_state_dict(trained.generator.state_dict())
    return save_checkpoint(model, tmp_path_factory.mktemp("ema") / "ema.ckpt")


@pytest.mark.filterwarnings("ignore:Concept.s. .* never occur")  # the untrained generator's
def test_generator_option_dissects_the_named_submodule_with_its_own_layer_names(
    ema_checkpoint, tmp_path, capsys
):
    module = ["--module", "tests.cli.models:EMASceneGAN"]
    out = tmp_path / "out"
    argv = [str(ema_checkpoint), *module, "--generator", "generator_ema", "--layers", "layer3"]
    assert main([*argv, *SMALL, "--out", str(out)]) == 0
    assert "layer3: 32 units" in capsys.readouterr().out

    loaded = EMASceneGAN.load_from_checkpoint(ema_checkpoint, map_location="cpu").eval()
    ema = AnalysedGenerator.of(loaded, "generator_ema")
    assert written(out) == dissect(ema, ["layer3"], load_toy_segmenter(), step=0, **KWARGS)
    # Not the other generator of the module, whose labels differ:
    other = dissect(loaded, ["generator.layer3"], load_toy_segmenter(), **KWARGS)
    assert other.labels("generator.layer3") != written(out).labels("layer3")


def test_unknown_generator_name_lists_the_valid_names(ema_checkpoint, tmp_path, capsys):
    argv = [str(ema_checkpoint), "--module", "tests.cli.models:EMASceneGAN", "--layers", "layer3"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--generator", "generator_emma", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--generator 'generator_emma' is not a submodule of EMASceneGAN" in err
    assert "Did you mean 'generator_ema'" in err
    assert "Valid layers: " in err

    with pytest.raises(SystemExit):
        main([*argv, "--generator", "generator_ema", "--layers", "generator.layer3"])
    err = capsys.readouterr().err
    assert "Unknown layer 'generator.layer3'" in err
    assert "Layers are named relative to --generator 'generator_ema'." in err


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A checkpoint whose ArtifactPruningCallback state prunes the two best units of layer2."""
    model = load_pretrained_scene_gan()
    unpruned = dissect(model, LAYERS, load_toy_segmenter(), **KWARGS)
    best = sorted(u.unit for u in unpruned.layers["generator.layer2"].interpretable_units[:2])
    assert len(best) == 2
    mask = PruningMask({"generator.layer2": best})
    states = {
        "ArtifactPruningCallback{'layer': 'generator.layer2'}": {MASK_STATE_KEY: mask.state_dict()}
    }
    path = save_checkpoint(model, tmp_path_factory.mktemp("pruned") / "pruned.ckpt", states)
    return path, mask, unpruned


def test_the_saved_pruning_mask_is_applied_as_in_training(pruned, tmp_path, capsys):
    path, mask, unpruned = pruned
    out = tmp_path / "out"
    assert main([str(path), "--layers", *LAYERS, *SMALL, "--out", str(out)]) == 0
    units = mask.units("generator.layer2")
    assert (
        f"pruning mask from the checkpoint: generator.layer2 units {units[0]}, {units[1]} pruned "
        "(pass --no-pruning-mask to dissect the unpruned model)"
    ) in capsys.readouterr().out

    report = written(out)
    for unit in units:
        found = report.layers["generator.layer2"].units[unit]
        assert found.iou == 0
        assert not found.interpretable
    model = SceneGAN.load_from_checkpoint(path, map_location="cpu").eval()
    PruningMask(mask.state_dict()["units"]).apply(model)
    expected = dissect(model, LAYERS, load_toy_segmenter(), step=0, **KWARGS)
    assert report == expected
    for layer in LAYERS:
        assert report.labels(layer) == expected.labels(layer)
    assert report.labels("generator.layer2") != unpruned.labels("generator.layer2")


def test_no_pruning_mask_dissects_the_unpruned_model(pruned, tmp_path, capsys):
    path, _, unpruned = pruned
    out = tmp_path / "out"
    argv = [str(path), "--layers", *LAYERS, *SMALL, "--no-pruning-mask", "--out", str(out)]
    assert main(argv) == 0
    assert "pruning mask" not in capsys.readouterr().out
    assert written(out).layers == unpruned.layers
