"""Train the toy-world GAN with TensorBoard logging: the project's demo.

``python -m gan_dissect_callbacks.demos train`` (or ``examples/train_scenes.py``) calls
:func:`train_scene_gan`. Attaching an analysis callback is one argument:
``train_scene_gan(callbacks=[DissectionCallback(...)])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.scenes import render_scenes

__all__ = ["SceneDataModule", "default_callbacks", "train_scene_gan"]

#: The layers the demo dissects: the 4×4, 8×8 and 16×16 featuremaps of the 32-px generator.
DEMO_LAYERS = ("generator.layer1", "generator.layer2", "generator.layer3")


class SceneDataModule(pl.LightningDataModule):
    """Rendered toy scenes as a training set of images in ``[-1, 1]``.

    Args:
        num_scenes: how many scenes to render (once, in :meth:`setup`).
        image_size: image side in pixels.
        batch_size: training batch size.
        seed: seed of the scene renderer.

    Example:
        >>> dm = SceneDataModule(num_scenes=8, batch_size=4)
        >>> dm.setup("fit")
        >>> tuple(next(iter(dm.train_dataloader()))[0].shape)
        (4, 3, 32, 32)
    """

    def __init__(
        self, num_scenes: int = 10_000, image_size: int = 32, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        self.num_scenes = num_scenes
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            generator = torch.Generator().manual_seed(self.seed)
            images, _ = render_scenes(self.num_scenes, self.image_size, generator=generator)
            self.dataset = TensorDataset(images)

    def train_dataloader(self) -> DataLoader:
        assert self.dataset is not None, "call setup() first"
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),
        )


def train_scene_gan(
    batches: int = 2000,
    *,
    batch_size: int = 64,
    image_size: int = 32,
    log_dir: str | Path = "runs",
    name: str = "scenes",
    callbacks: Sequence[pl.Callback] = (),
    seed: int = 0,
    num_scenes: int = 10_000,
    accelerator: str = "cpu",
    devices: Any = 1,
    strategy: Any = "auto",
    enable_progress_bar: bool = True,
    **trainer_kwargs: Any,
) -> tuple[SceneGAN, pl.Trainer]:
    """Train :class:`SceneGAN` on rendered scenes for ``batches`` training batches.

    TensorBoard logs go to ``{log_dir}/{name}/version_N``. The trainer's ``max_steps`` is
    ``2 * batches`` because the GAN steps two optimizers per batch (see
    :mod:`gan_dissect_callbacks.demos.gan` on the step axis).

    Returns:
        The trained module and its trainer.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    model = SceneGAN(image_size=image_size)
    data = SceneDataModule(num_scenes, image_size, batch_size, seed)
    trainer = pl.Trainer(
        max_steps=2 * batches,
        max_epochs=-1,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        logger=TensorBoardLogger(str(log_dir), name=name),
        callbacks=list(callbacks),
        log_every_n_steps=10,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=data)
    return model, trainer


def default_callbacks(every_n_batches: int = 500, num_samples: int = 256) -> list[pl.Callback]:
    """The analysis callbacks the demo attaches, configured for the toy world.

    Dissection of three layers, causal tests of four concepts on ``generator.layer3`` (ranked by
    the dissection's latest report), and SWD / discriminator score, all every
    ``every_n_batches`` training batches.
    """
    from gan_dissect_callbacks.callbacks import (
        DissectionCallback,
        InterventionCallback,
        QualityMonitor,
    )
    from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter

    segmenter = load_toy_segmenter()
    # The demo shows every analysis at its cadence, so no overhead budget stretches it; the
    # untrained baseline (step 0) starts the dissection and quality curves.
    dissection = DissectionCallback(
        list(DEMO_LAYERS),
        segmenter,
        every_n_train_steps=every_n_batches,
        on_train_start=True,
        num_samples=num_samples,
        max_overhead=None,
    )
    return [
        dissection,
        InterventionCallback(
            "generator.layer3",
            ["sun", "cloud", "tree", "house"],
            segmenter,
            every_n_train_steps=every_n_batches,
            dissection=dissection,
            max_overhead=None,
        ),
        QualityMonitor(
            every_n_train_steps=every_n_batches,
            on_train_start=True,
            num_samples=num_samples,
            max_overhead=None,
        ),
    ]
