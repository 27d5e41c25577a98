"""Sample quality beside interpretability: ``QualityMonitor``.

``QualityMonitor`` logs the global SWD (per level and averaged) and the discriminator's mean score
at a cadence, under ``{name}/`` (default ``quality``), so runs of different variants compare as
in the paper's table (interpretable units from
:class:`~gan_dissect_callbacks.callbacks.dissection.DissectionCallback` beside SWD).

Example:
    >>> QualityMonitor(every_n_train_steps=250).state_key
    'QualityMonitor{}'
    >>> QualityMonitor(generator="generator_ema", name="quality_ema").state_key
    "QualityMonitor{'name': 'quality_ema'}"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.callbacks._real_images import (
    AUTO,
    RealImages,
    check_real_source,
    draw_real_images,
    resolve_discriminator,
)
from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.callbacks._trainer import report_output
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.engines.passes import PassBatch, SampleConsumer, run_sample_pass
from gan_dissect_callbacks.engines.sampling import LatentSampler
from gan_dissect_callbacks.metrics.quality import DiscriminatorScore
from gan_dissect_callbacks.metrics.swd import SlicedWassersteinDistance
from gan_dissect_callbacks.reporting.artifacts import quality_scalars

__all__ = ["QualityMonitor"]


class QualityMonitor(ScheduledAnalysis):
    """Log the global SWD (per level and averaged) and the discriminator score at a cadence.

    Scalars ``{name}/swd_{resolution}``, ``{name}/swd_avg`` (×10³, lower is better,
    :class:`~gan_dissect_callbacks.metrics.swd.SlicedWassersteinDistance` with the real
    descriptors kept between checks) and ``{name}/discriminator_score`` (mean discriminator
    output on the same generated images; comparable only within a run) on the batch step axis.
    Every check uses the same seeded latents. Computed and logged on rank 0 only; no JSON.
    The real side of the SWD is made once and kept: the real descriptors, and their sorted
    projections (64 MiB per pyramid level at the defaults), which are half of a check's sorting.
    Beyond that fixed cost a check holds the generated images' descriptors (``num_samples × 128``
    per level), one normalised copy of a level's set and the projections of 128 directions at a
    time; later checks sort only the generated side.

    Args:
        real_images: real images (see :mod:`~gan_dissect_callbacks.callbacks._real_images`);
            ``None`` takes them from the training dataloader.
        every_n_train_steps: measure after every ``n`` training batches (``None``: never).
        every_n_epochs: measure after every ``n`` training epochs (``None``: never).
        on_train_start: also measure before the first batch.
        on_train_end: also measure when training ends (skipped if the last batch was measured).
        num_samples: generated images per measurement.
        num_real: real images (default: ``num_samples``).
        batch_size: images per forward pass.
        seed: seed of the latents and of the SWD.
        discriminator: a submodule name of the LightningModule, a callable, ``None`` (no score)
            or ``"auto"`` (``pl_module.discriminator`` if there is one).
        num_descriptors_per_image: SWD neighbourhoods per image per level (paper: 128).
        num_projections: SWD random directions per level (paper: 512).
        name: the analysis's name, the tag prefix (default ``"quality"``); give each of several
            monitors its own (it then enters ``state_key`` too).
        generator: the generator to measure: ``None`` (the LightningModule), a dotted attribute
            name such as ``"generator_ema"``, or an ``nn.Module`` kept outside it.
        generate: latents → images in ``[-1, 1]``; by default the analysed module's ``forward``.
        sample_latents: ``(n, generator) → latents``; found on the module when omitted.
        latent_dim: latent size, when the module does not say.
        raise_on_error: re-raise failures instead of warning and going on.
        max_overhead: the largest share of training wall time the analysis may take; the
            cadence is stretched to hold it (``None``: no budget). See docs/callbacks.md.
    """

    _what = "check"
    #: It never changes the generator, so analyses after it may share its samples.
    _declares_generator_changes = True
    _default_name = "quality"
    _writes_reports = False
    #: One entry per measurement: ``{"step": n, "swd_avg": ..., ...}``.
    history: list[dict[str, Any]]

    def __init__(
        self,
        *,
        real_images: RealImages | None = None,
        every_n_train_steps: int | None = 500,
        every_n_epochs: int | None = None,
        on_train_start: bool = False,
        on_train_end: bool = True,
        num_samples: int = 256,
        num_real: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        discriminator: str | Callable[[Tensor], Tensor] | None = AUTO,
        num_descriptors_per_image: int = 128,
        num_projections: int = 512,
        name: str | None = None,
        generator: str | nn.Module | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        raise_on_error: bool = False,
        max_overhead: float | None = 0.05,
    ) -> None:
        super().__init__(
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            on_train_start=on_train_start,
            on_train_end=on_train_end,
            raise_on_error=raise_on_error,
            name=name,
            generator=generator,
            generate=generate,
            sample_latents=sample_latents,
            latent_dim=latent_dim,
            max_overhead=max_overhead,
        )
        check_real_source(real_images)
        num_samples = check_int(num_samples, "num_samples")
        batch_size = check_int(batch_size, "batch_size")
        num_descriptors_per_image = check_int(
            num_descriptors_per_image, "num_descriptors_per_image"
        )
        num_projections = check_int(num_projections, "num_projections")
        self.num_real = check_int(num_real, "num_real", optional=True) or num_samples
        self.real_images = real_images
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = check_int(seed, "seed", minimum=0)
        self.discriminator = discriminator
        self.num_descriptors_per_image = num_descriptors_per_image
        self.num_projections = num_projections
        self._swd: SlicedWassersteinDistance | None = None

    @property
    def state_key(self) -> str:
        return self._state_key_of()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        resolve_discriminator(pl_module, self.discriminator)  # an unknown name fails here

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        if not trainer.is_global_zero:  # rank 0 measures alone; the others have nothing to do
            return
        samples = self._take_samples(step)
        if not isinstance(samples, _GeneratedQuality):
            samples = self._sample_consumer(trainer, pl_module, step)
            assert samples is not None  # on rank 0
            run_sample_pass(self.analysed_generator, [samples])
        samples.raise_error()
        values = samples.compute()
        self.history.append({"step": step, **values})
        report_output(trainer, self.analysis_name).log_scalars(
            quality_scalars(values, self.analysis_name), step
        )

    def _sample_consumer(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> _GeneratedQuality | None:
        if not trainer.is_global_zero:
            return None
        if self._swd is None:
            real = draw_real_images(self.real_images, trainer, pl_module, self.num_real, self.seed)
            # Keep every descriptor (no reservoir) and sync nothing: rank 0 measures alone.
            swd = SlicedWassersteinDistance(
                image_size=real.shape[-1],
                max_descriptors=max(len(real), self.num_samples) * self.num_descriptors_per_image,
                num_descriptors_per_image=self.num_descriptors_per_image,
                num_projections=self.num_projections,
                seed=self.seed,
                reset_real_features=False,
                sync_on_compute=False,
            )
            for chunk in real.split(self.batch_size):
                swd.update(chunk, real=True)
            self._swd = swd
        return _GeneratedQuality(
            self._swd,
            resolve_discriminator(pl_module, self.discriminator),
            num_samples=self.num_samples,
            batch_size=self.batch_size,
            seed=self.seed,
        )


class _GeneratedQuality(SampleConsumer):
    """A check's pass: the generated side of the SWD, and the discriminator's score."""

    def __init__(
        self,
        swd: SlicedWassersteinDistance,
        discriminator: Callable[[Tensor], Tensor] | None,
        *,
        num_samples: int,
        batch_size: int,
        seed: int,
    ) -> None:
        # A discriminator outside the generator is kept in eval mode too.
        modules = [discriminator] if isinstance(discriminator, nn.Module) else []
        super().__init__(num_samples, batch_size, seed=seed, modules=modules)
        self.swd = swd
        self.discriminator = discriminator
        self.score = (
            DiscriminatorScore(sync_on_compute=False) if discriminator is not None else None
        )

    def begin(self, g: AnalysedGenerator) -> None:
        # The fakes of a pass whose check did not compute (an analysis in between changed the
        # generator) are dropped; the real side is kept.
        self.swd.reset()

    def add(self, batch: PassBatch) -> None:
        images = batch.images.float()
        self.swd.update(images.cpu(), real=False)
        if self.score is not None and self.discriminator is not None:
            self.score.update(self.discriminator(images).float().cpu())

    def compute(self) -> dict[str, float]:
        values = {name: float(v) for name, v in self.swd.compute().items()}
        self.swd.reset()
        if self.score is not None:
            values["discriminator_score"] = float(self.score.compute())
        return values
