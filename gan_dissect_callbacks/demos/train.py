"""Train the toy-world GAN with TensorBoard logging: the project's demo.

``python -m gan_dissect_callbacks.demos train`` (or ``examples/train_scenes.py``) calls
:func:`train_scene_gan`. Attaching an analysis callback is one argument:
``train_scene_gan(callbacks=[DissectionCallback(...)])``.

The demo counts *batches* everywhere, as the curves do (see :mod:`~gan_dissect_callbacks.demos.gan`
on the step axis): its progress bar shows batches done of the batches asked for, and its
checkpoint is ``checkpoints/batch=2500.ckpt``. Lightning's closing line "``max_steps=5000``
reached" still counts optimizer steps, two per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm.contrib.logging import logging_redirect_tqdm

from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.scenes import render_scenes

__all__ = [
    "BatchCheckpoint",
    "BatchProgressBar",
    "SceneDataModule",
    "default_callbacks",
    "train_scene_gan",
]

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


class BatchProgressBar(TQDMProgressBar):
    """One progress bar over the whole run: training batches done of ``total_batches``.

    Lightning's own bar restarts at every epoch, so it never shows how far the run has come;
    this one counts what the curves count.

    Args:
        total_batches: the training batches of the run.
        refresh_rate: redraw every this many batches.
    """

    def __init__(self, total_batches: int, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.total_batches = total_batches

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.train_progress_bar.reset(total=self.total_batches)
        self.train_progress_bar.initial = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch} | batches")

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        from gan_dissect_callbacks.callbacks._trainer import batch_step

        bar, done = self.train_progress_bar, batch_step(trainer) + 1
        if bar is not None and self._should_update(done, bar.total):
            bar.n = done
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class BatchCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` whose ``filename`` may use ``{batch}``: training batches done.

    Lightning's ``{step}`` is ``trainer.global_step``, twice the batches for a GAN that steps two
    optimizers. By default the checkpoint is ``batch=2500.ckpt`` after 2,500 batches (the latest
    one only, written at the end of each epoch and of training).

    Example:
        >>> BatchCheckpoint().filename
        '{batch}'
    """

    def __init__(
        self, dirpath: str | Path | None = None, filename: str | None = "{batch}", **kwargs: Any
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename, **kwargs)

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, Tensor]:
        from gan_dissect_callbacks.callbacks._trainer import batch_step

        candidates = super()._monitor_candidates(trainer)
        candidates["batch"] = torch.tensor(batch_step(trainer) + 1)
        return candidates


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

    TensorBoard logs go to ``{log_dir}/{name}/version_N``, the checkpoint to its
    ``checkpoints/batch={batches}.ckpt`` (:class:`BatchCheckpoint`, unless ``callbacks`` holds a
    ``ModelCheckpoint`` or ``enable_checkpointing=False``). The progress bar is a
    :class:`BatchProgressBar` unless ``callbacks`` holds one. The trainer's ``max_steps`` is
    ``2 * batches`` because the GAN steps two optimizers per batch (see
    :mod:`gan_dissect_callbacks.demos.gan` on the step axis).

    Returns:
        The trained module and its trainer.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    model = SceneGAN(image_size=image_size)
    data = SceneDataModule(num_scenes, image_size, batch_size, seed)
    callbacks = list(callbacks)
    if enable_progress_bar and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        # First, so that the bar shows a batch done before the analyses after it start.
        callbacks.insert(0, BatchProgressBar(batches))
    if trainer_kwargs.get("enable_checkpointing", True) and not any(
        isinstance(cb, ModelCheckpoint) for cb in callbacks
    ):
        callbacks.append(BatchCheckpoint())
    trainer = pl.Trainer(
        max_steps=2 * batches,
        max_epochs=-1,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        logger=TensorBoardLogger(str(log_dir), name=name),
        callbacks=callbacks,
        log_every_n_steps=10,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    # Each analysis prints a line as it starts and ends; through tqdm it lands above the bar.
    with logging_redirect_tqdm(loggers=[logging.getLogger("lightning.pytorch")]):
        trainer.fit(model, datamodule=data)
    return model, trainer


def default_callbacks(
    every_n_batches: int = 500, num_samples: int = 256, artifact_samples: int = 128
) -> list[pl.Callback]:
    """The analysis callbacks the demo attaches, configured for the toy world.

    All three uses of the method, every ``every_n_batches`` training batches: dissection of three
    layers (``num_samples`` samples); causal tests of four concepts on ``generator.layer3``
    (ranked by the dissection's latest report); artifact units of ``generator.layer3`` found,
    verified and pruned (``prune=True``, ``artifact_samples`` samples, top 3 candidates per
    check); and SWD / discriminator score (``num_samples`` samples). Dissection and SWD also
    measure the untrained generator (step 0); artifact checks start at the first cadence step,
    since pruning a generator that has learnt nothing would only prune noise.

    The artifact check uses smaller SWD sizes than the callback's defaults (32 descriptors per
    image, 64 projections, 8 top images per unit), which keeps one check to a few seconds on two
    CPU cores; the planted-artifact test of the toy world (``tests/engines/test_artifacts.py``)
    finds planted units at these sizes.

    Example:
        >>> [type(cb).__name__ for cb in default_callbacks()]
        ['DissectionCallback', 'InterventionCallback', 'ArtifactPruningCallback', 'QualityMonitor']
    """
    from gan_dissect_callbacks.callbacks import (
        ArtifactPruningCallback,
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
        ArtifactPruningCallback(
            "generator.layer3",
            every_n_train_steps=every_n_batches,
            prune=True,
            num_samples=artifact_samples,
            top_k=min(8, artifact_samples),
            top_n=3,
            num_descriptors_per_image=32,
            num_projections=64,
            max_overhead=None,
        ),
        QualityMonitor(
            every_n_train_steps=every_n_batches,
            on_train_start=True,
            num_samples=num_samples,
            max_overhead=None,
        ),
    ]
