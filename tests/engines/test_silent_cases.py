"""No silent case: what gave a quiet wrong number or a bare KeyError now says what happened."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from gan_dissect_callbacks.callbacks import DissectionCallback
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.demos.train import SceneDataModule
from gan_dissect_callbacks.engines import dissect
from tests.engines.synthetic import PaintingGenerator, exact_segmenter

KW = {"num_samples": 16, "batch_size": 8, "top_k": 0}


class HiddenNaN(nn.Module):
    """Images are fine; a hidden layer beside them is NaN (a diverged side branch)."""

    latent_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.painter = PaintingGenerator().eval()
        self.side = nn.Identity()

    def forward(self, z: Tensor) -> Tensor:
        self.side(self.painter.features(z) * float("nan"))
        return self.painter(z)


def test_nan_only_in_a_hidden_layer_names_that_layer():
    with pytest.raises(ValueError, match=r"finite activations at layer 'side'"):
        dissect(HiddenNaN(), ["painter.features", "side"], exact_segmenter(), **KW)


def test_a_layer_that_does_not_run_is_named():
    gan = SceneGAN(latent_dim=8, width=4, image_size=16)
    with pytest.raises(ValueError, match=r"'discriminator\.main\.0'.*did not run"):
        dissect(gan, ["discriminator.main.0"], load_toy_segmenter(), **KW)


def test_concepts_that_never_occur_get_one_warning_naming_them():
    class OnlyRed(PaintingGenerator):
        def forward(self, z: Tensor) -> Tensor:
            images = super().forward(z)
            return torch.cat([images[:, :1], -torch.ones_like(images[:, 1:])], 1)

    with pytest.warns(UserWarning, match=r"Concept\(s\) green, blue never occur in the 16") as w:
        dissect(OnlyRed().eval(), ["features"], exact_segmenter(), **KW)
    assert len([x for x in w if "never occur" in str(x.message)]) == 1


def test_images_that_stay_in_zero_one_get_a_warning():
    class ZeroOne(PaintingGenerator):
        def forward(self, z: Tensor) -> Tensor:
            return (super().forward(z) + 1) / 2

    with pytest.warns(UserWarning, match=r"stayed in \[0, 1\].*expected in \[-1, 1\]"):
        dissect(ZeroOne().eval(), ["features"], exact_segmenter(), **KW)


def test_a_healthy_dissection_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dissect(PaintingGenerator().eval(), ["features"], exact_segmenter(), **KW)


def test_numpy_integers_are_accepted_wherever_ints_are():
    report = dissect(
        PaintingGenerator().eval(), ["features"], exact_segmenter(),
        num_samples=np.int64(16), batch_size=np.int32(8), top_k=np.int64(2), top_n=np.int64(1),
    )  # fmt: skip
    assert report.num_samples == 16 and type(report.num_samples) is int
    callback = DissectionCallback(
        ["generator.layer2"], load_toy_segmenter(), every_n_train_steps=np.int64(2),
        num_samples=np.int64(16), batch_size=np.int64(8), top_k=np.int64(2),
     max_overhead=None)  # fmt: skip
    assert callback.every_n_train_steps == 2 and callback.num_samples == 16


def test_a_failed_json_write_keeps_the_tensorboard_output(tmp_path):
    pl.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    Path(logger.log_dir).mkdir(parents=True)
    (Path(logger.log_dir) / "dissection").write_text("a file where the report folder should be")
    callback = DissectionCallback(
        ["generator.layer2"], load_toy_segmenter(), every_n_train_steps=2, num_samples=16,
        batch_size=8, top_k=2, top_n=1,
     max_overhead=None)  # fmt: skip
    trainer = pl.Trainer(
        max_steps=4, logger=logger, callbacks=[callback], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"step 2 was logged to TensorBoard.*could not be written"):
        trainer.fit(
            SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0),
            datamodule=SceneDataModule(32, batch_size=8),
        )
    assert [e["step"] for e in callback.history] == [2]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "dissection/generator.layer2/interpretable_units/total" in events.Tags()["scalars"]
    assert "dissection/generator.layer2/gallery/0" in events.Tags()["images"]
