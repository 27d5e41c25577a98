"""``InterventionCallback``: watch, while a GAN trains, whether its units *cause* concepts.

At its cadence the callback ranks the units of one layer by their IoU with each tracked concept
(from the latest report of the
:class:`~gan_dissect_callbacks.callbacks.dissection.DissectionCallback` given as ``dissection``,
when it covers that layer, or by running
:func:`~gan_dissect_callbacks.engines.dissection.dissect` itself), then runs the engines of
:mod:`~gan_dissect_callbacks.engines.intervention` and logs, per concept ``c`` (tags start with
the callback's ``name``, ``"intervention"`` by default):

* scalars ``intervention/{c}/removed_at_n{n}`` (share of the concept's pixels removed by ablating
  the top-n units over the whole image), ``intervention/{c}/random_removed_at_n{n}`` (as many
  random units), ``intervention/{c}/ace`` (the average causal effect of the top ``top_n``
  units at patches), ``intervention/{c}/inserted_fraction`` and
  ``intervention/{c}/random_inserted_fraction`` (share of a patch where the concept was absent
  that it covers after inserting those units, or as many random ones), and with
  ``alpha_steps > 0`` ``intervention/{c}/alpha_removed_at_n{n}`` (the α ranking's curve);
* images ``intervention/{c}/removal_curve`` (the curves as a chart) and
  ``intervention/{c}/images`` (rows: original samples, the top ``top_n`` units ablated
  everywhere, the same units inserted in the centre patch; samples under 64 px enlarged);
* a JSON report ``{log_dir}/{name}/step_XXXXXXX.json`` (and ``latest.json``); each
  removal curve there holds its values at its ``points``.

**Cost**: the measures share their images. Every measure of every concept runs on one stream
of samples (:func:`~gan_dissect_callbacks.engines.intervention.concept_effects`): the originals
are generated and segmented once for the removal curves, the insertion values k, the ACE and
the insertion of all concepts; the random removal baseline, which does not depend on the
concept, is ablated once; only the unit counts that are logged are ablated; the ACE and the
insertion of a concept share their inserted images, and each sample is edited at
``ace_locations`` of the patches, a seeded uniform subset that estimates the same ACE. The
numbers are those of the engine functions called one by one.

The views are drawn by :mod:`~gan_dissect_callbacks.reporting.intervention`.

**Step axis**: as for the dissection callback, a step is a training batch; the analysis of the
model after ``b`` batches is logged at step ``b``.

**Harmless**: every analysis draws latents from its own seeded generator, runs with the global
RNG state forked, in eval mode (each submodule's mode restored) and removes its hooks, so
training with the callback is bit-for-bit the same as without. A failure inside the analysis is
reported as a warning and training goes on, unless ``raise_on_error=True``.

Example:
    >>> from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
    >>> callback = InterventionCallback(
    ...     "generator.layer2", ["tree", "house"], load_toy_segmenter(), every_n_train_steps=500
    ... )
    >>> callback.state_key
    "InterventionCallback{'layer': 'generator.layer2', 'concepts': ['tree', 'house']}"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import (
    THRESHOLD_RULES,
    ThresholdRule,
    check_choice,
    check_fraction,
    check_int,
    check_name,
    check_segmenter,
)
from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.callbacks._trainer import report_output
from gan_dissect_callbacks.engines.dissection import dissect
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.engines.intervention import (
    ConceptAbsentError,
    ConceptEffects,
    NoInsertionSiteError,
    concept_effects,
    intervention_images,
    iou_ranking,
    iou_scores,
    optimize_alpha,
    patch_locations,
    removal_curve,
)
from gan_dissect_callbacks.engines.sampling import LatentSampler
from gan_dissect_callbacks.reporting.intervention import (
    intervention_scalars,
    log_intervention,
    report_payload,
)
from gan_dissect_callbacks.segmenters.base import Segmenter

if TYPE_CHECKING:
    from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
    from gan_dissect_callbacks.engines.dissection import DissectionReport

__all__ = ["ACE_LOCATIONS", "InterventionCallback"]

#: The default patches per sample of the ACE and the insertion: on the demo's 4×4 grid this
#: quarter of the patches keeps their seed-to-seed noise near that of the full grid (see
#: docs/callbacks.md).
ACE_LOCATIONS = 4


class InterventionCallback(ScheduledAnalysis):
    """Ablate and insert a layer's top units for each tracked concept; log the causal effects.

    Args:
        layer: dotted name of the layer to intervene on, a layer of the analysed generator:
            ``"generator.layer2"`` on the LightningModule, ``"layer2"`` on a ``generator`` module.
        concepts: the concepts to track, names of the segmenter's vocabulary.
        segmenter: gives concept masks of generated images (see
            :class:`~gan_dissect_callbacks.segmenters.base.Segmenter`).
        every_n_train_steps: run after every ``n`` training batches.
        every_n_epochs: run after every ``n`` training epochs.
        on_train_start: also run before the first batch.
        on_train_end: also run when training ends (skipped if the last batch was analysed).
        num_samples: latents per measure (the same seeded latents at every run).
        batch_size: images per forward pass.
        seed: seed of the analysis's latents and random units.
        top_n: how many top units the ACE, the insertion and the image grid edit.
        max_ablated_units: N, the most top units ablated for the removal curve.
        num_random: random unit orders of the removal curve's baseline.
        log_points: the n of the ``removed_at_n{n}`` scalars (those ≤ ``max_ablated_units``):
            the removal curves are measured at these n and at ``max_ablated_units`` only.
        patch_size: side of the patches P of the ACE and the insertion, in featuremap pixels;
            by default a quarter of the featuremap's side.
        ace_locations: m, the patches P each sample is edited at for the ACE and the insertion:
            a seeded uniform subset of the grid per sample, which estimates the same δ and
            fractions at about m/L of the cost (``None``: every patch). See docs/callbacks.md.
        alpha_steps: steps of the α optimisation per concept (0: skip it); its ranking's removal
            curve is logged beside the IoU ranking's.
        num_images: samples in the image grid (0: no images).
        dissection: a ``DissectionCallback`` of the same generator whose latest report ranks the
            units when it covers ``layer`` (list it before this callback, so that its report of
            a step is ready); without one, or before its first report, the callback dissects
            ``layer`` itself.
        dissect_samples: samples of the callback's own dissection.
        rule: threshold rule of the callback's own dissection, ``"quantile"`` or ``"iqr"``.
        quantile: quantile of the quantile rule.
        generator: the generator to analyse: ``None`` for the LightningModule itself, the name
            of one of its submodules (``"generator_ema"``), or an ``nn.Module`` kept outside it.
        generate: latents → images in ``[-1, 1]``; by default the generator's ``forward``.
        sample_latents: ``(n, generator) → latents``; by default the generator's (or the
            LightningModule's) ``sample_latents``, or standard normal latents of ``latent_dim``.
        latent_dim: latent size, when the modules do not say.
        raise_on_error: re-raise failures of the analysis instead of warning and going on.
        max_overhead: the largest share of training wall time the analysis may take; the
            cadence is stretched to hold it (``None``: no budget). See docs/callbacks.md.
        name: the analysis's name, its tag prefix and report folder (default
            ``"intervention"``); give each of several intervention callbacks its own.
    """

    _what = "intervention analysis"
    #: It never changes the generator, so analyses after it may share its samples.
    _declares_generator_changes = True
    _default_name = "intervention"
    #: One entry per run: step, ranking source and, per concept, the measured numbers.
    history: list[dict[str, Any]]

    def __init__(
        self,
        layer: str,
        concepts: Sequence[str],
        segmenter: Segmenter,
        *,
        every_n_train_steps: int | None = 500,
        every_n_epochs: int | None = None,
        on_train_start: bool = False,
        on_train_end: bool = True,
        num_samples: int = 32,
        batch_size: int = 64,
        seed: int = 0,
        top_n: int = 4,
        max_ablated_units: int = 10,
        num_random: int = 3,
        log_points: Sequence[int] = (1, 2, 5, 10),
        patch_size: int | None = None,
        ace_locations: int | None = ACE_LOCATIONS,
        alpha_steps: int = 0,
        num_images: int = 8,
        dissection: DissectionCallback | None = None,
        dissect_samples: int = 128,
        rule: ThresholdRule = "quantile",
        quantile: float = 0.99,
        generator: str | nn.Module | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        raise_on_error: bool = False,
        max_overhead: float | None = 0.05,
        name: str | None = None,
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
        check_name(layer, "layer", example="'generator.layer2'")
        if isinstance(concepts, str) or not concepts:
            raise ValueError(
                f"Expected argument `concepts` to be a non-empty list of concept names, but got "
                f"{concepts!r}."
            )
        check_segmenter(segmenter)
        known = segmenter.vocabulary.names
        unknown = [c for c in concepts if c not in known]
        if unknown:
            raise ValueError(
                f"Unknown concept(s) {unknown} in argument `concepts`. Known concepts: "
                f"{', '.join(known)}."
            )
        patch_size = check_int(patch_size, "patch_size", optional=True)
        ace_locations = check_int(ace_locations, "ace_locations", optional=True)
        num_samples = check_int(num_samples, "num_samples")
        batch_size = check_int(batch_size, "batch_size")
        top_n = check_int(top_n, "top_n")
        max_ablated_units = check_int(max_ablated_units, "max_ablated_units")
        num_random = check_int(num_random, "num_random", minimum=0)
        alpha_steps = check_int(alpha_steps, "alpha_steps", minimum=0)
        num_images = check_int(num_images, "num_images", minimum=0)
        dissect_samples = check_int(dissect_samples, "dissect_samples")
        if isinstance(log_points, str) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in log_points
        ):
            raise ValueError(
                f"Expected argument `log_points` to be a list of ints ≥ 1, but got {log_points!r}."
            )
        check_choice(rule, "rule", THRESHOLD_RULES)
        quantile = check_fraction(quantile, "quantile")
        from gan_dissect_callbacks.callbacks.dissection import DissectionCallback

        if dissection is not None and not isinstance(dissection, DissectionCallback):
            raise TypeError(
                "Expected argument `dissection` to be None or a DissectionCallback, but got "
                f"{type(dissection).__name__}."
            )
        self.layer = layer
        self.concepts = list(concepts)
        self.segmenter = segmenter
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = check_int(seed, "seed", minimum=0)
        self.top_n = top_n
        self.max_ablated_units = max_ablated_units
        self.num_random = num_random
        self.log_points = sorted(set(log_points))
        self.patch_size = patch_size
        self.ace_locations = ace_locations
        self.alpha_steps = alpha_steps
        self.num_images = num_images
        self.dissection = dissection
        self.dissect_samples = dissect_samples
        self.rule = rule
        self.quantile = quantile

    @property
    def state_key(self) -> str:
        return self._state_key_of(layer=self.layer, concepts=self.concepts)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # finds the generator; warns without a logger
        self.analysed_generator.check_layers([self.layer])  # an unknown name lists the valid ones
        if self.dissection is None:
            return
        if not any(cb is self.dissection for cb in getattr(trainer, "callbacks", [])):
            raise ValueError(
                "InterventionCallback(dissection=...) ranks units by a DissectionCallback that is "
                "not in the Trainer's callbacks, so it never runs. Pass it in "
                "`Trainer(callbacks=[dissection, intervention])` too, or leave `dissection=None`."
            )
        # Setup follows the callbacks' order: the dissection may not have found its own yet.
        ranked_by = AnalysedGenerator.module_of(pl_module, self.dissection.generator)
        if ranked_by is not self.analysed_generator.module:
            raise ValueError(
                "InterventionCallback(dissection=...) would rank the units of one generator by the "
                "dissection of another (their `generator=` differ). Give both the same "
                "`generator=` (e.g. both 'generator_ema')."
            )

    # ------------------------------------------------------------------ the analysis

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Analyse at ``step`` (batches done so far); logs on rank 0. All ranks must call it."""
        report, source = self._ranking_report(trainer, pl_module, step)
        rankings = {c: iou_ranking(report, self.layer, c) for c in self._drawn(report)}
        places, _ = self._patches()
        # One stream of samples for every measure of every concept: the originals are generated
        # and segmented once, the random removal baseline is shared, and only the logged unit
        # counts are ablated.
        effects = (
            concept_effects(
                self.analysed_generator,
                self.layer,
                self.segmenter,
                rankings,
                locations=places,
                top_n=self.top_n,
                max_units=self.max_ablated_units,
                num_random=self.num_random,
                points=self.log_points,
                locations_per_sample=self.ace_locations,
                **self._sampled(),
            )
            if rankings
            else {}
        )
        concepts: dict[str, Any] = {}
        images: dict[str, dict[str, Tensor]] = {}
        for concept in self.concepts:
            concepts[concept], shots = None, None
            measured = effects.get(concept)
            try:
                if isinstance(measured, ConceptAbsentError):
                    raise measured
                if measured is not None:
                    concepts[concept], shots = self._analyse_concept(
                        report, concept, rankings[concept], measured
                    )
            except ConceptAbsentError as err:  # the generator does not draw it (yet)
                if self.raise_on_error:
                    raise
                rank_zero_warn(
                    f"InterventionCallback: concept {concept!r} was skipped at step {step}: {err}"
                )
            if shots is not None:
                images[concept] = shots
        entry = {"step": step, "layer": self.layer, "source": source, "concepts": concepts}
        self.history.append(entry)
        if trainer.is_global_zero:
            out = report_output(trainer, self.analysis_name)
            out.log_scalars(
                intervention_scalars(entry, self.log_points, name=self.analysis_name), step
            )
            for writer in out.tensorboard():
                log_intervention(writer, entry, images, name=self.analysis_name, runs=self._runs)
            self._write_json_last(out, step, report_payload(entry))

    def _ranking_report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> tuple[DissectionReport, str]:
        """The dissection that ranks the units: the given callback's, or a fresh one."""
        if self.dissection is not None:
            # Due at this step too? Then run it first, whatever the order of the callbacks.
            self.dissection.catch_up(trainer, pl_module, self._hook)
        given = self.dissection.last_report if self.dissection is not None else None
        if given is not None and self.layer in given.layers:
            return given, f"DissectionCallback (step {given.step})"
        report = dissect(
            self.analysed_generator,
            [self.layer],
            self.segmenter,
            num_samples=self.dissect_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            rule=self.rule,
            quantile=self.quantile,
            top_k=0,
            step=step,
        )
        return report, "dissect"

    def _drawn(self, report: DissectionReport) -> list[str]:
        """The tracked concepts the dissection saw; a warning names each one it never saw."""
        drawn = []
        for concept in self.concepts:
            c = report.vocabulary.index(concept)
            if report.concept_fraction and report.concept_fraction[c] == 0:
                rank_zero_warn(
                    f"InterventionCallback: concept {concept!r} is absent from the generated "
                    "samples at this step, so its intervention was skipped."
                )
                continue
            drawn.append(concept)
        return drawn

    def _sampled(self) -> dict[str, Any]:
        """The samples every measure draws."""
        return {"num_samples": self.num_samples, "batch_size": self.batch_size, "seed": self.seed}

    def _analyse_concept(
        self,
        report: DissectionReport,
        concept: str,
        ranking: list[int],
        measured: ConceptEffects,
    ) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
        """The measures of one concept as logged (with α if asked), and its pictures."""
        g, layer, seg = self.analysed_generator, self.layer, self.segmenter
        sampled = self._sampled()
        top = ranking[: self.top_n]
        places, centre = self._patches()
        k_all = measured.values
        insertion: dict[str, Any] | None = None
        if isinstance(measured.insertion, NoInsertionSiteError):
            rank_zero_warn(f"InterventionCallback: insertion skipped: {measured.insertion}")
        else:
            insertion = measured.insertion.to_dict()
        result: dict[str, Any] = {
            "ranking": ranking[: self.max_ablated_units],
            "removal": measured.removal.to_dict(),
            "ace": measured.ace.to_dict(),
            "insertion": insertion,
        }
        if self.alpha_steps:
            alpha = optimize_alpha(
                g,
                layer,
                seg,
                concept,
                init=iou_scores(report, layer, concept),
                values=k_all,
                locations=places,
                steps=self.alpha_steps,
                seed=self.seed,
            )
            alpha_curve = removal_curve(
                g,
                layer,
                seg,
                concept,
                alpha.ranking,
                max_units=self.max_ablated_units,
                num_random=0,
                points=self.log_points,
                **sampled,
            )
            result["alpha"] = {
                "alpha": alpha.alpha,
                "ranking": alpha.ranking[: self.max_ablated_units],
            }
            result["alpha_removal"] = alpha_curve.to_dict()
        shots = None
        if self.num_images:
            shots = intervention_images(
                g,
                layer,
                top,
                k_all[top],
                insert_where=centre,
                num_images=self.num_images,
                seed=self.seed,
            )
        return result, shots

    def _patches(self) -> tuple[Tensor, Tensor]:
        """The patch grid P at the layer's featuremap resolution, and a centred patch."""
        _, h, w = self.analysed_generator.featuremap_shape(self.layer, seed=self.seed)
        side = self.patch_size if self.patch_size is not None else max(1, min(h, w) // 4)
        if side > min(h, w):
            raise ValueError(
                f"Expected argument `patch_size` to fit the {h}x{w} featuremap of layer "
                f"{self.layer!r}, but got {side}."
            )
        centre = torch.zeros(h, w, dtype=torch.bool)
        top, left = (h - side) // 2, (w - side) // 2
        centre[top : top + side, left : left + side] = True
        return patch_locations((h, w), side), centre
