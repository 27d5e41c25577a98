"""``DissectionCallback``: watch interpretability evolve in TensorBoard while a GAN trains.

At its cadence the callback runs :func:`~gan_dissect_callbacks.engines.dissection.dissect` on the
generator being trained (the LightningModule itself, a submodule such as an EMA copy, or a module
kept outside it: ``generator=``) and logs, per dissected layer, under the analysis's ``name``
(``"dissection"`` unless given):

* scalars ``{name}/{layer}/interpretable_units/{category}`` (and ``/total``),
  ``{name}/{layer}/distinct_concepts``, ``{name}/{layer}/label_stability`` (share of the
  previous dissection's interpretable units that kept their concept) and
  ``{name}/{layer}/mean_best_iou``; the same numbers once more in one TensorBoard run per layer
  (``{log_dir}/{name}/{layer}``) and per category (``{log_dir}/{name}/categories/{category}``),
  so that a chart of the custom-scalars layout draws one coloured line per layer or category;
* a histogram of every unit's best IoU, ``{name}/{layer}/best_iou``;
* images: a unit gallery (top units, their top-activating samples with the unit's region
  highlighted, label and IoU written on it) and the paper's unit-class distribution chart;
* a markdown table of the interpretable units;
* each layer's top units over training (their IoU and label at every dissection so far), as a
  heatmap table and a markdown table, from the callback's ``history`` (kept in checkpoints);
* a JSON report ``{log_dir}/{name}/step_XXXXXXX.json`` (and ``latest.json``), written
  atomically, also when there is no logger.

**Step axis**: a *step* here is a training batch (``trainer.fit_loop.total_batch_idx``), the axis
``self.log`` uses; ``trainer.global_step`` advances twice per batch in a GAN with two optimizers.
A dissection run after ``n`` batches is logged at step ``n``; the one before training
(``on_train_start=True``) at 0.

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
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import (
    THRESHOLD_RULES,
    ThresholdRule,
    check_choice,
    check_fraction,
    check_int,
    check_layer_names,
    check_segmenter,
)
from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.callbacks._trainer import report_output
from gan_dissect_callbacks.engines.dissection import DissectionReport, DissectionSamples, dissect
from gan_dissect_callbacks.engines.dissection.report import DEFAULT_IQR_CUTOFF
from gan_dissect_callbacks.engines.sampling import LatentSampler
from gan_dissect_callbacks.reporting.dissection import log_dissection, scalar_values, summarise
from gan_dissect_callbacks.reporting.writing import ReportOutput
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = ["DissectionCallback"]


class DissectionCallback(ScheduledAnalysis):
    """Dissect generator layers at a cadence and log interpretability to TensorBoard.

    Args:
        layers: dotted names of the layers to dissect, relative to the analysed generator, e.g.
            ``["generator.layer2", "generator.layer3"]`` on the LightningModule, or
            ``["layer3"]`` with ``generator=`` an EMA copy.
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
        iou_cutoff: a unit is interpretable when its best IoU exceeds this...
        iqr_cutoff: ... and, under ``rule="iqr"``, its IQR with that concept exceeds this.
        top_k: top-activating samples kept per unit (gallery columns).
        top_n: units per layer shown in the gallery (interpretable first, best IoU first);
            0 disables it.
        generator: the generator to dissect: ``None`` for the LightningModule itself, the dotted
            name of a submodule (``"generator_ema"``), or an ``nn.Module`` kept outside it.
        generate: latents → images in ``[-1, 1]``; by default the analysed module's ``forward``.
        sample_latents: ``(n, generator) → latents``; by default the analysed module's (or the
            LightningModule's) ``sample_latents``, or standard normal latents of ``latent_dim``.
        latent_dim: latent size, when the modules do not say.
        raise_on_error: re-raise failures of the analysis instead of warning and going on.
        max_overhead: the largest share of training wall time the analysis may take; the
            cadence is stretched to hold it (``None``: no budget). See docs/callbacks.md.
        name: the analysis's name: tag prefix and report folder (default ``"dissection"``);
            give each of several DissectionCallbacks its own.
        metric_kwargs: extra arguments of the IoU metric (e.g. ``num_levels``).

    Attributes:
        last_report: the latest :class:`DissectionReport` (``None`` before the first).
    """

    _what = "dissection"
    #: It never changes the generator, so analyses after it may share its samples.
    _declares_generator_changes = True
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
        on_train_start: bool = False,
        on_train_end: bool = True,
        num_samples: int = 256,
        batch_size: int = 64,
        seed: int = 0,
        rule: ThresholdRule = "quantile",
        quantile: float = 0.99,
        iou_cutoff: float = 0.04,
        iqr_cutoff: float = DEFAULT_IQR_CUTOFF,
        top_k: int = 8,
        top_n: int = 12,
        generator: str | nn.Module | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        raise_on_error: bool = False,
        max_overhead: float | None = 0.05,
        name: str | None = None,
        metric_kwargs: dict[str, Any] | None = None,
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
        self.layers = check_layer_names(layers)
        self.segmenter = check_segmenter(segmenter)
        self.num_samples = check_int(num_samples, "num_samples")
        self.batch_size = check_int(batch_size, "batch_size")
        self.seed = check_int(seed, "seed", minimum=0)
        self.rule = check_choice(rule, "rule", THRESHOLD_RULES)
        self.quantile = check_fraction(quantile, "quantile")
        self.iou_cutoff = check_fraction(iou_cutoff, "iou_cutoff", closed_low=True)
        self.iqr_cutoff = check_fraction(iqr_cutoff, "iqr_cutoff", closed_low=True)
        self.top_k = check_int(top_k, "top_k", minimum=0)
        self.top_n = check_int(top_n, "top_n", minimum=0)
        self.metric_kwargs = dict(metric_kwargs or {})
        self.last_report: DissectionReport | None = None
        self._layout_written = False

    @property
    def state_key(self) -> str:
        return self._state_key_of(layers=self.layers, rule=self.rule)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # finds the generator; warns without a logger
        self.analysed_generator.check_layers(self.layers)  # an unknown name lists the valid ones

    # ------------------------------------------------------------------ the analysis

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Dissect at ``step`` (batches done so far); logs on rank 0. All ranks must call it."""
        output = report_output(trainer, self.analysis_name)
        # Only the process that logs to TensorBoard draws the gallery's examples.
        shown = self.top_n if trainer.is_global_zero and output.writers else 0
        shared = self._take_samples(step)
        report = dissect(
            self.analysed_generator,
            self.layers,
            self.segmenter,
            num_samples=self.num_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            rule=self.rule,  # type: ignore[arg-type]
            quantile=self.quantile,
            iou_cutoff=self.iou_cutoff,
            iqr_cutoff=self.iqr_cutoff,
            top_k=self.top_k,
            top_n=shown,
            metric_kwargs=self.metric_kwargs,
            step=step,
            samples=shared if isinstance(shared, DissectionSamples) else None,
        )
        entry = summarise(report, self.history[-1] if self.history else None)
        self.history.append(entry)
        self.last_report = report
        if trainer.is_global_zero:
            self._write(output, report, entry)

    def _sample_consumer(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> DissectionSamples:
        return DissectionSamples(
            self.layers,
            self.segmenter,
            num_samples=self.num_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            quantile=self.quantile,
            top_k=self.top_k,
            metric_kwargs=self.metric_kwargs,
        )

    # ------------------------------------------------------------------ logging

    def _write(self, output: ReportOutput, report: DissectionReport, entry: dict[str, Any]) -> None:
        step = int(entry["step"])
        scalars = scalar_values(entry, report.vocabulary.categories, prefix=self.analysis_name)
        for logger in output.loggers:  # TensorBoard gets its scalars from log_dissection
            logger.log_metrics(scalars, step=step)
        for writer in output.tensorboard():
            log_dissection(
                writer,
                report,
                entry,
                write_layout=not self._layout_written,
                prefix=self.analysis_name,
                runs=self._runs,
                history=self.history,
                timeline_units=max(1, self.top_n),
            )
        self._layout_written = self._layout_written or bool(output.writers)
        self._write_json_last(output, step, report.to_dict())
