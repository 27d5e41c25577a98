"""The shipped LightningCLI example: its YAML builds the four callbacks and the toy segmenter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("jsonargparse")

from lightning.pytorch.cli import LightningCLI
from torch import Tensor

from gan_dissect_callbacks.callbacks import (
    ArtifactPruningCallback,
    DissectionCallback,
    InterventionCallback,
    QualityMonitor,
)
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY, render_scenes
from gan_dissect_callbacks.demos.segmenter import ToySegmenter
from gan_dissect_callbacks.demos.train import SceneDataModule

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_cli.yaml"


@pytest.fixture(autouse=True)
def _no_command_line(monkeypatch):
    """LightningCLI reads ``args=`` alone, not pytest's own command line."""
    monkeypatch.setattr(sys, "argv", ["lightning_cli.py"])


def _small_copy(tmp_path: Path) -> Path:
    """The shipped config with a tiny model, data and analyses, logging under ``tmp_path``."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    config["trainer"]["enable_progress_bar"] = False
    config["model"].update(latent_dim=16, width=8)
    config["data"].update(num_scenes=64, batch_size=8)
    small = {
        DissectionCallback: {"num_samples": 16, "batch_size": 8, "top_k": 4, "top_n": 3},
        InterventionCallback: {"num_samples": 8, "dissect_samples": 16, "top_n": 2},
        ArtifactPruningCallback: {
            "num_samples": 16,
            "num_real": 16,
            "top_k": 4,
            "num_seeds": 2,
            "num_projections": 16,
        },
        QualityMonitor: {"num_samples": 16, "num_real": 16, "num_projections": 16},
    }
    for init_args in small.values():
        # The exact cadence: a time budget would skip an analysis when training is this short.
        init_args["max_overhead"] = None
    by_name = {f"gan_dissect_callbacks.callbacks.{cls.__name__}": v for cls, v in small.items()}
    for entry in config["trainer"]["callbacks"]:
        entry["init_args"].update(
            by_name[entry["class_path"]], every_n_train_steps=2, raise_on_error=True
        )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_shipped_config_builds_the_callbacks_and_each_writes_its_report(tmp_path):
    config = _small_copy(tmp_path)
    # Two optimizer steps per batch: 8 steps are 4 batches, so analyses at batches 2 and 4.
    cli = LightningCLI(
        SceneGAN,
        SceneDataModule,
        args=["fit", "--config", str(config), "--trainer.max_steps=8"],
        save_config_kwargs={"overwrite": True},
    )

    found = {type(cb): cb for cb in cli.trainer.callbacks if type(cb).__module__.startswith("gan_")}
    assert set(found) == {
        DissectionCallback,
        InterventionCallback,
        ArtifactPruningCallback,
        QualityMonitor,
    }
    dissection, intervention = found[DissectionCallback], found[InterventionCallback]
    artifacts, quality = found[ArtifactPruningCallback], found[QualityMonitor]
    # Arguments from the YAML itself, not only from the small copy's overrides.
    assert dissection.layers == ["generator.layer2", "generator.layer3"]
    assert dissection.run_on_train_start is True
    assert (intervention.layer, intervention.concepts) == (
        "generator.layer3",
        ["sun", "cloud", "tree", "house"],
    )
    assert artifacts.layer == "generator.layer2"
    assert quality.run_on_train_start is True
    for callback in found.values():
        assert callback.every_n_train_steps == 2
    assert (dissection.num_samples, intervention.num_samples, artifacts.num_samples) == (16, 8, 16)
    # Each callback got its own segmenter, built from its class_path like load_toy_segmenter().
    for segmenter in (dissection.segmenter, intervention.segmenter):
        assert isinstance(segmenter, ToySegmenter)
        assert segmenter.vocabulary == SCENE_VOCABULARY

    log_dir = Path(cli.trainer.log_dir)
    # on_train_start adds the untrained baseline at step 0; on_train_end falls on step 4.
    for name, steps in [("dissection", [0, 2, 4]), ("intervention", [2, 4]), ("artifacts", [2, 4])]:
        reports = sorted(p.name for p in (log_dir / name).glob("step_*.json"))
        assert reports == [f"step_{step:07d}.json" for step in steps], name
        assert json.loads((log_dir / name / "latest.json").read_text())["step"] == 4
    assert [entry["step"] for entry in quality.history] == [0, 2, 4]


def real_scenes(n: int, generator: torch.Generator) -> Tensor:
    """A real-image source a config names by its import path."""
    return render_scenes(n, 32, generator=generator)[0]


def normal_latents(n: int, generator: torch.Generator) -> Tensor:
    """A latent sampler a config names by its import path."""
    return torch.randn(n, 64, generator=generator)


def test_a_config_names_functions_and_submodules_by_path(tmp_path):
    config = yaml.safe_load(EXAMPLE.read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    callbacks = {
        entry["class_path"].rsplit(".", 1)[1]: entry for entry in config["trainer"]["callbacks"]
    }
    callbacks["QualityMonitor"]["init_args"].update(
        real_images=f"{__name__}.real_scenes", sample_latents=f"{__name__}.normal_latents"
    )
    callbacks["ArtifactPruningCallback"]["init_args"].update(discriminator="discriminator")
    callbacks["DissectionCallback"]["init_args"].update(generator="generator", layers=["layer3"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    cli = LightningCLI(SceneGAN, SceneDataModule, run=False, args=["--config", str(path)])

    found = {type(cb): cb for cb in cli.trainer.callbacks}
    assert found[QualityMonitor].real_images is real_scenes
    assert found[QualityMonitor].sample_latents is normal_latents
    assert found[ArtifactPruningCallback].discriminator == "discriminator"
    assert (found[DissectionCallback].generator, found[DissectionCallback].layers) == (
        "generator",
        ["layer3"],
    )
