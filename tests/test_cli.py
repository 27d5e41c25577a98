"""gan-dissect on a real Lightning checkpoint and on a factory, and the paper-scale example."""

import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from torch import nn

from gan_dissect_callbacks.cli import checkpoint_step, main
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.pretrained import load_pretrained_scene_gan
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.demos.train import SceneDataModule
from gan_dissect_callbacks.engines.dissection import DissectionReport, dissect
from gan_dissect_callbacks.instrumentation import capture_activations
from gan_dissect_callbacks.reporting.dissection import scalar_values, summarise

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["generator.layer2", "generator.layer3"]
SMALL = ["--num-samples", "24", "--batch-size", "12", "--top-k", "2", "--top-n", "3"]
FACTORY = "gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as Lightning writes it: the shipped toy GAN trained 2 more batches."""
    folder = tmp_path_factory.mktemp("checkpoint")
    model = load_pretrained_scene_gan().train()
    trainer = pl.Trainer(
        max_steps=4,  # two optimizer steps per batch: 2 batches
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(folder),
    )
    trainer.fit(model, datamodule=SceneDataModule(num_scenes=16, batch_size=8, seed=0))
    path = folder / "toy.ckpt"
    trainer.save_checkpoint(path)
    return path


def events_of(folder):
    events = EventAccumulator(str(folder), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    return events


def test_checkpoint_gives_the_report_dissect_gives_and_the_callback_views(
    checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main([str(checkpoint), "--layers", *LAYERS, *SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr()

    # The step is the checkpoint's number of training batches, not its global_step (4).
    expected = dissect(
        SceneGAN.load_from_checkpoint(checkpoint, map_location="cpu"),
        LAYERS,
        load_toy_segmenter(),
        num_samples=24,
        batch_size=12,
        top_k=2,
        step=2,
    )
    written = out / "dissection" / "step_0000002.json"
    assert written.read_text() == expected.to_json()
    assert (out / "dissection" / "latest.json").read_text() == expected.to_json()
    assert DissectionReport.from_json(written).summary() == expected.summary()

    for line in expected.summary().splitlines():
        assert line in printed.out
    assert str(written) in printed.out
    assert f"tensorboard --logdir {out}" in printed.out
    assert "dissecting 12/24 samples" in printed.err
    assert "dissecting 24/24 samples" in printed.err

    events = events_of(out)
    tags = events.Tags()
    categories = expected.vocabulary.categories
    for tag, value in scalar_values(summarise(expected), categories).items():
        # TensorBoard stores scalars as float32.
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [(2, pytest.approx(value))], tag
    for layer in LAYERS:
        prefix = f"dissection/{layer}"
        assert f"{prefix}/interpretable_units/total" in tags["scalars"]
        assert f"{prefix}/label_stability" not in tags["scalars"]  # nothing to compare with
        assert f"{prefix}/gallery/0" in tags["images"]
        assert f"{prefix}/unit_classes" in tags["images"]
        assert f"{prefix}/best_iou" in tags["histograms"]
        assert f"{prefix}/units/text_summary" in tags["tensors"]
        assert [e.step for e in events.Images(f"{prefix}/gallery/0")] == [2]
    assert "custom_scalars__config__" in tags["tensors"]


def test_factory_form_and_label_stability_between_steps(tmp_path, capsys):
    out = tmp_path / "out"
    args = [FACTORY, "--layers", "generator.layer3", *SMALL, "--out", str(out)]
    assert main([*args, "--step", "5"]) == 0
    assert main([*args, "--step", "7", "--rule", "iqr"]) == 0
    capsys.readouterr()

    model = load_pretrained_scene_gan()
    expected = dissect(
        model,
        ["generator.layer3"],
        load_toy_segmenter(),
        num_samples=24,
        batch_size=12,
        top_k=2,
        rule="iqr",
        step=7,
    )
    assert (out / "dissection" / "step_0000007.json").read_text() == expected.to_json()
    assert (out / "dissection" / "latest.json").read_text() == expected.to_json()
    first = DissectionReport.from_json(out / "dissection" / "step_0000005.json")
    assert first.rule == "quantile"
    assert first.step == 5

    # The second dissection is compared with the first, as the callback does between steps.
    stability = summarise(expected, summarise(first))["layers"]["generator.layer3"]
    steps = events_of(out).Scalars("dissection/generator.layer3/label_stability")
    assert [(e.step, e.value) for e in steps] == [(7, pytest.approx(stability["label_stability"]))]


class Unscaled(nn.Module):
    """A generator whose images are in [0, 255] and that does not say its latent size."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Conv2d(4, 3, 1)

    def forward(self, z):
        return torch.sigmoid(self.layer1(z.view(-1, 4, 1, 1).expand(-1, 4, 8, 8))) * 255


def test_what_the_model_produces_is_checked_with_exit_code_1(tmp_path, capsys):
    args = ["tests.test_cli:Unscaled", "--layers", "layer1", "--num-samples", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--latent-dim N" in capsys.readouterr().err
    assert main([*args, "--latent-dim", "4", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "gan-dissect: error: the dissection failed: Expected `images` in [-1, 1]" in err
    assert not (tmp_path / "dissection").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/missing.ckpt"], "No checkpoint file at '{tmp}/missing.ckpt'."),
        (["{tmp}"], "is a directory. Pass the .ckpt file inside it."),
        (["not a factory"], "but 'not a factory' is neither"),
        (["no_such_package.models:make"], "Could not import module 'no_such_package.models'"),
        (["gan_dissect_callbacks.demos.pretrained:nope"], "has no attribute 'nope'"),
        (["builtins:dict"], "to return an nn.Module, but it returned a dict."),
        ([FACTORY, "--module", "gan_dissect_callbacks.demos.gan:SceneGAN"], "checkpoints only"),
        (["{ckpt}", "--module", "torch.nn:Linear"], "with `load_from_checkpoint`"),
        (["{ckpt}", "--module", "gan_dissect_callbacks.demos.gan:SceneGenerator"], "has none."),
        (["{ckpt}", "--module", "gan_dissect_callbacks.demos.train:SceneDataModule"], "Pass the"),
        (["{ckpt}", "--segmenter", "builtins:dict"], "lacks vocabulary, segment"),
        (["{ckpt}", "--quantile", "1.5"], "Expected argument `--quantile` to be a float in (0, 1)"),
        (["{ckpt}", "--num-samples", "0"], "Expected argument `--num-samples` to be an int ≥ 1"),
        (["{ckpt}", "--device", "gpu7"], "Expected argument `--device` to be cpu, cuda or cuda:N"),
    ],
)
def test_bad_input_is_one_clear_usage_error(checkpoint, tmp_path, capsys, argv, message):
    def fill(text):
        return text.format(tmp=tmp_path, ckpt=checkpoint)

    with pytest.raises(SystemExit) as exit_info:
        main([fill(a) for a in argv] + ["--layers", "generator.layer3", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert fill(message) in capsys.readouterr().err


def test_unknown_layer_lists_the_valid_ones(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint), "--layers", "generator.layer9", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown layer 'generator.layer9'. Did you mean" in err
    assert "Valid layers: generator, generator.layer1," in err


def test_the_module_runs_as_the_command(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "gan_dissect_callbacks.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert done.stdout.startswith("usage: gan-dissect")
    assert "--top-n" in done.stdout


def test_checkpoint_step_reads_batches_not_optimizer_steps(checkpoint):
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4
    assert checkpoint_step(saved) == 2


# ---------------------------------------------------------------- examples/progan_like.py


@pytest.fixture(scope="module")
def progan():
    spec = importlib.util.spec_from_file_location(
        "progan_like_example", ROOT / "examples" / "progan_like.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_scale_generator_has_the_papers_layers(progan):
    generator = progan.ProGANLikeGenerator()  # 256 px, 512 units: built, not run
    units = [512] * 8 + [256] * 2 + [128] * 2 + [64] * 2
    sides = [4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256]
    assert generator.layer_shapes() == {
        f"layer{i + 1}": (u, s) for i, (u, s) in enumerate(zip(units, sides))
    }


def test_reduced_generator_names_layers_and_draws_images(progan):
    generator = progan.ProGANLikeGenerator(latent_dim=32, resolution=32, max_channels=64)
    names = [f"layer{i}" for i in range(1, 9)]
    assert [n for n, _ in generator.named_children()] == ["normalize_latent", *names, "output"]
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with capture_activations(generator, names) as acts:
        images = generator(z)
    assert images.shape == (3, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    for name, (units, side) in generator.layer_shapes().items():
        assert acts[name].shape == (3, units, side, side)
        # Pixel norm: every pixel's feature vector has unit mean square.
        assert torch.allclose(acts[name].pow(2).mean(1), torch.ones(3, side, side), atol=1e-4)
    with pytest.raises(ValueError, match=r"`resolution` to be a power of two from 8 to 1024"):
        progan.ProGANLikeGenerator(resolution=48)


def test_reduced_config_dissects_with_150_ade20k_concepts(progan):
    model = progan.ProGANLike(latent_dim=32, resolution=32, max_channels=64)
    segmenter = progan.random_ade20k_segmenter("module", output_size=32)
    report, seconds, peak_mib = progan.run_dissection(
        model, ["layer4"], segmenter, num_samples=8, batch_size=4
    )
    layer = report.layers["generator.layer4"]
    assert len(report.vocabulary) == 150
    assert layer.num_units == 64
    assert len(layer.iou[0]) == 150
    assert all(len(u.top_samples) == 8 for u in layer.units)
    assert seconds > 0 and peak_mib > 0


def test_dissect_mode_prints_time_and_peak_memory(progan, capsys):
    tiny = ["--resolution", "16", "--max-channels", "16", "--latent-dim", "16"]
    argv = ["--dissect", *tiny, "--num-samples", "4", "--batch-size", "4"]
    assert progan.main([*argv, "--segmentation-size", "16", "--layers", "layer3"]) == 0
    out = capsys.readouterr().out
    assert "layer3: 16 units at 8x8 -> 16x16 masks of 150 concepts; metric state" in out
    assert "4 samples of 16 px in batches of 4:" in out
    assert "peak memory" in out


def test_user_weights_load_from_a_state_dict_or_a_checkpoint(progan, tmp_path):
    source = progan.ProGANLike(latent_dim=16, resolution=16, max_channels=16, seed=0)
    target = progan.ProGANLike(latent_dim=16, resolution=16, max_channels=16, seed=1)
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(source(z), target(z))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "run.ckpt")
    progan.load_generator_weights(target.generator, tmp_path / "run.ckpt")
    assert torch.equal(source(z), target(z))

    torch.save(source.generator.state_dict(), tmp_path / "generator.pt")
    wider = progan.ProGANLike(latent_dim=16, resolution=16, max_channels=32)
    with pytest.raises(ValueError, match="does not fit"):
        progan.load_generator_weights(wider.generator, tmp_path / "generator.pt")
    with pytest.raises(FileNotFoundError, match="weights file"):
        progan.load_generator_weights(wider.generator, tmp_path / "missing.pt")


def test_random_segformer_segments_exclusively_over_ade20k(progan):
    pytest.importorskip("transformers")
    segmenter = progan.random_ade20k_segmenter("segformer", output_size=16)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    masks = segmenter.segment(images)
    assert masks.shape == (2, 150, 16, 16)
    assert torch.equal(masks.sum(1), torch.ones(2, 16, 16, dtype=torch.long))
    assert segmenter.vocabulary.category_of("windowpane") == "part"


def test_train_mode_attaches_the_dissection_callback(progan, tmp_path, capsys):
    tiny = ["--resolution", "16", "--max-channels", "16", "--latent-dim", "16"]
    argv = ["--train", *tiny, "--batches", "2", "--dissect-every", "1", "--num-samples", "8"]
    argv += ["--segmentation-size", "16", "--layers", "layer3", "--log-dir", str(tmp_path)]
    assert progan.main(argv) == 0
    out = capsys.readouterr().out
    assert "step 0: generator.layer3" in out
    assert "step 2: generator.layer3" in out
    logs = list((tmp_path / "progan_like").glob("version_*/dissection/latest.json"))
    assert len(logs) == 1
    assert DissectionReport.from_json(logs[0]).step == 2
