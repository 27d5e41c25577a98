"""``DissectionCallback``: watch interpretability evolve in TensorBoard while a GAN trains.

At its cadence the callback runs :func:`~gan_dissect_callbacks.engines.dissection.dissect` on the
module being trained and logs, per dissected layer:

* scalars ``dissection/{layer}/interpretable_units/{category}`` (and ``/total``),
  ``dissection/{layer}/distinct_concepts``, ``dissection/{layer}/label_stability`` (share of the
  previous dissection's interpretable units that kept their concept) and
  ``dissection/{layer}/mean_best_iou``, grouped by a custom-scalars layout;
* a histogram of every unit's best IoU, ``dissection/{layer}/best_iou``;
* images: a unit gallery (top units, their top-activating samples with the unit's region
  highlighted, label and IoU written on it) and the paper's unit-class distribution chart;
* a markdown table of the interpretable units;
* a JSON report ``{log_dir}/dissection/step_XXXXXXX.json`` (and ``latest.json``), written
  atomically, also when there is no logger.

**Step axis**: a *step* here is a training batch (``trainer.fit_loop.total_batch_idx``), the axis
``self.log`` uses; ``trainer.global_step`` advances twice per batch in a GAN with two optimizers.
A dissection run after ``n`` batches is logged at step ``n``; the one before training at 0.

**Harmless**: the analysis draws latents from its own seeded generator, runs with the global RNG
state forked, in eval mode (each submodule's mode restored), without gradients, and removes its
hooks, so training with the callback is bit-for-bit the same as without. A failure inside the
analysis is reported as a warning and training goes on, unless ``raise_on_error=True``.

Example:
    >>> from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
    >>> callback = DissectionCallback(
    ...     ["generator.layer2", "generator.layer3"], load_toy_segmenter(), every_n_train_steps=500
    ... )
    >>> callback.state_key
    "DissectionCallback{'layers': ['generator.layer2', 'generator.layer3'], 'rule': 'quantile'}"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.callbacks._trainer import analysis_dir, tensorboard_writers
from gan_dissect_callbacks.engines.dissection import DissectionReport, dissect
from gan_dissect_callbacks.engines.sampling import LatentSampler, resolve_latent_sampler
from gan_dissect_callbacks.instrumentation import resolve_layer
from gan_dissect_callbacks.reporting.dissection_logging import (
    log_dissection,
    scalar_values,
    summarise,
    unit_galleries,
)
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = ["DissectionCallback"]

_RULES = ("quantile", "iqr")


class DissectionCallback(ScheduledAnalysis):
    """Dissect generator layers at a cadence and log interpretability to TensorBoard.

    Args:
        layers: dotted names of the layers to dissect on the LightningModule, e.g.
            ``["generator.layer2", "generator.layer3"]``.
        segmenter: gives concept masks of generated images (see
            :class:`~gan_dissect_callbacks.segmenters.base.Segmenter`).
        every_n_train_steps: dissect after every ``n`` training batches (the step axis above).
        every_n_epochs: dissect after every ``n`` training epochs.
        on_train_start: also dissect before the first batch (the untrained baseline).
        on_train_end: also dissect when training ends (skipped if the last batch was dissected).
        num_samples: generated images per dissection (split across processes under DDP).
        batch_size: images per forward pass.
        seed: seed of the analysis's own latent generator: every dissection sees the same latents,
            so curves compare the same samples over training.
        rule: threshold rule of the labels, ``"quantile"`` or ``"iqr"``.
        quantile: quantile of the quantile rule (0.99: the top 1% of activations).
        iou_cutoff: a unit is interpretable when its best IoU exceeds this.
        top_k: top-activating samples kept per unit (gallery columns).
        gallery_units: units per layer shown in the gallery (best IoU first); 0 disables it.
        sample_latents: ``(n, generator) → latents``; by default ``pl_module.sample_latents`` or
            standard normal latents of ``pl_module.latent_dim`` / ``hparams.latent_dim``.
        latent_dim: latent size, when the module does not say.
        generate: latents → images in ``[-1, 1]``; by default the module's ``forward``.
        raise_on_error: re-raise failures of the analysis instead of warning and going on.
        metric_kwargs: extra arguments of the IoU metric (e.g. ``num_levels``).
    """

    _what = "dissection"
    _default_name = "dissection"
    #: One entry per dissection: step, and per layer the logged numbers and unit labels.
    history: list[dict[str, Any]]

    def __init__(
        self,
        layers: Sequence[str],
        segmenter: Segmenter,
        *,
        every_n_train_steps: int | None = 500,
        every_n_epochs: int | None = None,
        on_train_start: bool = True,
        on_train_end: bool = True,
        num_samples: int = 256,
        batch_size: int = 64,
        seed: int = 0,
        rule: str = "quantile",
        quantile: float = 0.99,
        iou_cutoff: float = 0.04,
        top_k: int = 6,
        gallery_units: int = 12,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        raise_on_error: bool = False,
        metric_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            on_train_start=on_train_start,
            on_train_end=on_train_end,
            raise_on_error=raise_on_error,
        )
        if isinstance(layers, str) or not layers:
            raise ValueError(
                f"Expected argument `layers` to be a non-empty list of layer names, but got "
                f"{layers!r}."
            )
        if rule not in _RULES:
            raise ValueError(f"Expected argument `rule` to be one of {_RULES}, but got {rule!r}.")
        if not 0.0 < quantile < 1.0:
            raise ValueError(
                f"Expected argument `quantile` to be a float in (0, 1), but got {quantile}."
            )
        if not 0.0 <= iou_cutoff < 1.0:
            raise ValueError(
                f"Expected argument `iou_cutoff` to be a float in [0, 1), but got {iou_cutoff}."
            )
        for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{name}` to be an int ≥ 1, but got {value!r}.")
        if top_k < 0 or gallery_units < 0:
            raise ValueError(
                f"Expected `top_k` and `gallery_units` ≥ 0, but got {top_k} and {gallery_units}."
            )
        for attr in ("vocabulary", "segment"):
            if not hasattr(segmenter, attr):
                raise TypeError(
                    f"Expected argument `segmenter` to implement the Segmenter protocol "
                    f"(`vocabulary`, `segment`, `soft_segment`, `segmentation_size`), but "
                    f"{type(segmenter).__name__} has no `{attr}`."
                )
        self.layers = list(layers)
        self.segmenter = segmenter
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rule = rule
        self.quantile = quantile
        self.iou_cutoff = iou_cutoff
        self.top_k = top_k
        self.gallery_units = gallery_units
        self.sample_latents = sample_latents
        self.latent_dim = latent_dim
        self.generate = generate
        self.metric_kwargs = dict(metric_kwargs or {})
        self.last_report: DissectionReport | None = None
        self._layout_written = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, rule=self.rule)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name in self.layers:
            resolve_layer(pl_module, name)  # raises with the list of valid names
        resolve_latent_sampler(pl_module, self.sample_latents, self.latent_dim)
        super().setup(trainer, pl_module, stage)  # warns when there is no logger

    # ------------------------------------------------------------------ the analysis

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Dissect at ``step`` (batches done so far); logs on rank 0. All ranks must call it."""
        report = dissect(
            pl_module,
            self.layers,
            self.segmenter,
            generate=self.generate,
            sample_latents=self.sample_latents,
            latent_dim=self.latent_dim,
            num_samples=self.num_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            rule=self.rule,  # type: ignore[arg-type]
            quantile=self.quantile,
            iou_cutoff=self.iou_cutoff,
            top_k=self.top_k,
            metric_kwargs=self.metric_kwargs,
            step=step,
        )
        entry = summarise(report, self.history[-1] if self.history else None)
        self.history.append(entry)
        self.last_report = report
        if trainer.is_global_zero:
            self._write(trainer, pl_module, report, entry, analysis_dir(trainer, "dissection"))

    # ------------------------------------------------------------------ logging

    def _write(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        report: DissectionReport,
        entry: dict[str, Any],
        folder: Path,
    ) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        step = int(entry["step"])
        report.to_json(folder / f"step_{step:07d}.json")
        report.to_json(folder / "latest.json")
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_metrics(scalar_values(entry, report.vocabulary.categories), step=step)
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        galleries = unit_galleries(
            pl_module,
            report,
            sampler=resolve_latent_sampler(pl_module, self.sample_latents, self.latent_dim),
            generate=self.generate if self.generate is not None else pl_module,
            batch_size=self.batch_size,
            num_units=self.gallery_units if self.top_k else 0,
        )
        for writer in writers:
            log_dissection(
                writer, report, entry, galleries=galleries, write_layout=not self._layout_written
            )
        self._layout_written = True
