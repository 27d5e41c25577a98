"""``InterventionCallback``: watch, while a GAN trains, whether its units *cause* concepts.

At its cadence the callback ranks the units of one layer by their IoU with each tracked concept
(from the latest report of an attached
:class:`~gan_dissect_callbacks.callbacks.dissection.DissectionCallback` on that layer, or by
running :func:`~gan_dissect_callbacks.engines.dissection.dissect` itself), then runs the engines
of :mod:`~gan_dissect_callbacks.engines.intervention` and logs, per concept ``c``:

* scalars ``intervention/{c}/removed_at_n{n}`` (share of the concept's pixels removed by ablating
  the top-n units over the whole image), ``intervention/{c}/random_removed_at_n{n}`` (as many
  random units), ``intervention/{c}/ace`` (the average causal effect of the top ``ace_units``
  units at patches), ``intervention/{c}/inserted_fraction`` and
  ``intervention/{c}/random_inserted_fraction`` (share of a patch where the concept was absent
  that it covers after inserting those units, or as many random ones), and with
  ``alpha_steps > 0`` ``intervention/{c}/alpha_removed_at_n{n}`` (the α ranking's curve);
* images ``intervention/{c}/removal_curve`` (the curves as a chart) and
  ``intervention/{c}/images`` (rows: original samples, the top ``ace_units`` units ablated
  everywhere, the same units inserted in the centre patch; samples under 64 px enlarged);
* a JSON report ``{log_dir}/intervention/step_XXXXXXX.json`` (and ``latest.json``).

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

import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.callbacks._trainer import analysis_dir, tensorboard_writers
from gan_dissect_callbacks.engines.intervention import (
    ConceptAbsentError,
    NoInsertionSiteError,
    average_causal_effect,
    insertion_effect,
    insertion_values,
    intervention_images,
    iou_ranking,
    iou_scores,
    optimize_alpha,
    patch_locations,
    removal_curve,
)
from gan_dissect_callbacks.engines.sampling import (
    LatentSampler,
    resolve_latent_sampler,
    rng_isolated,
)
from gan_dissect_callbacks.instrumentation import capture_activations, eval_mode, resolve_layer
from gan_dissect_callbacks.reporting.images import image_grid
from gan_dissect_callbacks.segmenters.base import Segmenter

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import DissectionReport

__all__ = ["InterventionCallback"]

_RULES = ("quantile", "iqr")
#: Samples smaller than this (in pixels) are enlarged (nearest) in the image grid.
_MIN_IMAGE_SIDE = 64


def _check_int(value: object, name: str, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = f"None or an int ≥ {low}" if optional else f"an int ≥ {low}"
        raise ValueError(f"Expected argument `{name}` to be {allowed}, but got {value!r}.")


class InterventionCallback(ScheduledAnalysis):
    """Ablate and insert a layer's top units for each tracked concept; log the causal effects.

    Args:
        layer: dotted name of the layer to intervene on, e.g. ``"generator.layer2"``.
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
        max_units: N, the most top units ablated for the removal curve.
        num_random: random unit orders of the removal curve's baseline.
        log_points: the n of the ``removed_at_n{n}`` scalars (those ≤ ``max_units``).
        ace_units: how many top units the ACE and the insertion edit.
        patch_size: side of the patches P of the ACE and the insertion, in featuremap pixels;
            by default a quarter of the featuremap's side.
        alpha_steps: steps of the α optimisation per concept (0: skip it); its ranking's removal
            curve is logged beside the IoU ranking's.
        num_images: samples in the image grid (0: no images).
        use_dissection_callback: take the ranking from the latest report of an attached
            ``DissectionCallback`` that dissects ``layer``, when there is one.
        dissect_samples: samples of the callback's own dissection.
        rule: threshold rule of the callback's own dissection, ``"quantile"`` or ``"iqr"``.
        quantile: quantile of the quantile rule.
        sample_latents: ``(n, generator) → latents``; by default ``pl_module.sample_latents`` or
            standard normal latents of ``pl_module.latent_dim`` / ``hparams.latent_dim``.
        latent_dim: latent size, when the module does not say.
        generate: latents → images in ``[-1, 1]``; by default the module's ``forward``.
        raise_on_error: re-raise failures of the analysis instead of warning and going on.
    """

    _what = "intervention analysis"
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
        max_units: int = 10,
        num_random: int = 3,
        log_points: Sequence[int] = (1, 2, 5, 10, 20),
        ace_units: int = 4,
        patch_size: int | None = None,
        alpha_steps: int = 0,
        num_images: int = 6,
        use_dissection_callback: bool = True,
        dissect_samples: int = 128,
        rule: str = "quantile",
        quantile: float = 0.99,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        raise_on_error: bool = False,
    ) -> None:
        super().__init__(
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            on_train_start=on_train_start,
            on_train_end=on_train_end,
            raise_on_error=raise_on_error,
        )
        if not isinstance(layer, str) or not layer:
            raise ValueError(
                f"Expected argument `layer` to be a layer name such as 'generator.layer2', but "
                f"got {layer!r}."
            )
        if isinstance(concepts, str) or not concepts:
            raise ValueError(
                f"Expected argument `concepts` to be a non-empty list of concept names, but got "
                f"{concepts!r}."
            )
        for attr in ("vocabulary", "segment", "soft_segment", "segmentation_size"):
            if not hasattr(segmenter, attr):
                raise TypeError(
                    f"Expected argument `segmenter` to implement the Segmenter protocol "
                    f"(`vocabulary`, `segment`, `soft_segment`, `segmentation_size`), but "
                    f"{type(segmenter).__name__} has no `{attr}`."
                )
        known = segmenter.vocabulary.names
        unknown = [c for c in concepts if c not in known]
        if unknown:
            raise ValueError(
                f"Unknown concept(s) {unknown} in argument `concepts`. Known concepts: "
                f"{', '.join(known)}."
            )
        _check_int(patch_size, "patch_size", 1, optional=True)
        for name, value, low in (
            ("num_samples", num_samples, 1),
            ("batch_size", batch_size, 1),
            ("max_units", max_units, 1),
            ("num_random", num_random, 0),
            ("ace_units", ace_units, 1),
            ("alpha_steps", alpha_steps, 0),
            ("num_images", num_images, 0),
            ("dissect_samples", dissect_samples, 1),
        ):
            _check_int(value, name, low)
        if isinstance(log_points, str) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in log_points
        ):
            raise ValueError(
                f"Expected argument `log_points` to be a list of ints ≥ 1, but got {log_points!r}."
            )
        if rule not in _RULES:
            raise ValueError(f"Expected argument `rule` to be one of {_RULES}, but got {rule!r}.")
        if not 0.0 < quantile < 1.0:
            raise ValueError(
                f"Expected argument `quantile` to be a float in (0, 1), but got {quantile}."
            )
        self.layer = layer
        self.concepts = list(concepts)
        self.segmenter = segmenter
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.max_units = max_units
        self.num_random = num_random
        self.log_points = sorted(set(log_points))
        self.ace_units = ace_units
        self.patch_size = patch_size
        self.alpha_steps = alpha_steps
        self.num_images = num_images
        self.use_dissection_callback = use_dissection_callback
        self.dissect_samples = dissect_samples
        self.rule = rule
        self.quantile = quantile
        self.sample_latents = sample_latents
        self.latent_dim = latent_dim
        self.generate = generate

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layer=self.layer, concepts=self.concepts)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        resolve_layer(pl_module, self.layer)  # raises with the list of valid names
        resolve_latent_sampler(pl_module, self.sample_latents, self.latent_dim)
        super().setup(trainer, pl_module, stage)  # warns when there is no logger

    # ------------------------------------------------------------------ the analysis

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Analyse at ``step`` (batches done so far); logs on rank 0. All ranks must call it."""
        report, source = self._ranking_report(trainer, pl_module, step)
        concepts: dict[str, Any] = {}
        images: dict[str, Tensor] = {}
        for concept in self.concepts:
            try:
                concepts[concept], picture = self._analyse_concept(pl_module, report, concept)
            except ConceptAbsentError as err:  # the generator does not draw it (yet)
                if self.raise_on_error:
                    raise
                rank_zero_warn(
                    f"InterventionCallback: concept {concept!r} was skipped at step {step}: {err}"
                )
                concepts[concept], picture = None, None
            if picture is not None:
                images[concept] = picture
        entry = {"step": step, "layer": self.layer, "source": source, "concepts": concepts}
        self.history.append(entry)
        if trainer.is_global_zero:
            self._write(trainer, entry, images)

    def _ranking_report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> tuple[DissectionReport, str]:
        """The dissection that ranks the units: an attached callback's, or a fresh one."""
        from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
        from gan_dissect_callbacks.engines.dissection import dissect

        if self.use_dissection_callback:
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                report = getattr(callback, "last_report", None)
                if (
                    isinstance(callback, DissectionCallback)
                    and report is not None
                    and self.layer in report.layers
                ):
                    return report, f"DissectionCallback (step {report.step})"
        report = dissect(
            pl_module,
            [self.layer],
            self.segmenter,
            generate=self.generate,
            sample_latents=self.sample_latents,
            latent_dim=self.latent_dim,
            num_samples=self.dissect_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            rule=self.rule,  # type: ignore[arg-type]
            quantile=self.quantile,
            top_k=0,
            step=step,
        )
        return report, "dissect"

    def _common(self) -> dict[str, Any]:
        return {
            "generate": self.generate,
            "sample_latents": self.sample_latents,
            "latent_dim": self.latent_dim,
            "seed": self.seed,
        }

    def _analyse_concept(
        self, pl_module: pl.LightningModule, report: DissectionReport, concept: str
    ) -> tuple[dict[str, Any] | None, Tensor | None]:
        """Every measure for one concept; ``(None, None)`` when the concept is never drawn."""
        c = report.vocabulary.index(concept)
        if report.concept_fraction and report.concept_fraction[c] == 0:
            rank_zero_warn(
                f"InterventionCallback: concept {concept!r} is absent from the generated samples "
                "at this step, so its intervention was skipped."
            )
            return None, None
        common = self._common()
        sampled = {"num_samples": self.num_samples, "batch_size": self.batch_size, **common}
        ranking = iou_ranking(report, self.layer, concept)
        curve = removal_curve(
            pl_module,
            self.layer,
            self.segmenter,
            concept,
            ranking,
            max_units=self.max_units,
            num_random=self.num_random,
            **sampled,
        )
        top = ranking[: self.ace_units]
        places, centre = self._patches(pl_module)
        k_all = insertion_values(pl_module, self.layer, self.segmenter, concept, **sampled)
        ace = average_causal_effect(
            pl_module,
            self.layer,
            self.segmenter,
            concept,
            top,
            values=k_all[top],
            locations=places,
            **sampled,
        )
        try:
            insertion: dict[str, Any] | None = insertion_effect(
                pl_module, self.layer, self.segmenter, concept, top, locations=places, **sampled
            ).to_dict()
        except NoInsertionSiteError as err:
            rank_zero_warn(f"InterventionCallback: insertion skipped: {err}")
            insertion = None
        result: dict[str, Any] = {
            "ranking": ranking[: self.max_units],
            "removal": curve.to_dict(),
            "ace": ace.to_dict(),
            "insertion": insertion,
        }
        if self.alpha_steps:
            alpha = optimize_alpha(
                pl_module,
                self.layer,
                self.segmenter,
                concept,
                init=iou_scores(report, self.layer, concept),
                values=k_all,
                locations=places,
                steps=self.alpha_steps,
                **common,
            )
            alpha_curve = removal_curve(
                pl_module,
                self.layer,
                self.segmenter,
                concept,
                alpha.ranking,
                max_units=self.max_units,
                num_random=0,
                **sampled,
            )
            result["alpha"] = {"alpha": alpha.alpha, "ranking": alpha.ranking[: self.max_units]}
            result["alpha_removal"] = alpha_curve.to_dict()
        picture = None
        if self.num_images:
            shots = intervention_images(
                pl_module,
                self.layer,
                top,
                k_all[top],
                insert_where=centre,
                num_images=self.num_images,
                **common,
            )
            rows = torch.cat([shots["original"], shots["ablated"], shots["inserted"]])
            # Small GAN samples are unreadable at native size in TensorBoard: enlarge to ≥ 64 px.
            scale = max(1, math.ceil(_MIN_IMAGE_SIDE / min(rows.shape[-2:])))
            if scale > 1:
                rows = F.interpolate(rows, scale_factor=float(scale), mode="nearest")
            picture = image_grid(rows, nrow=self.num_images)
        return result, picture

    def _patches(self, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor]:
        """The patch grid P at the layer's featuremap resolution, and a centred patch."""
        sampler = resolve_latent_sampler(pl_module, self.sample_latents, self.latent_dim)
        generate = self.generate if self.generate is not None else pl_module
        with (
            rng_isolated(pl_module.device),
            eval_mode(pl_module),
            torch.no_grad(),
            capture_activations(pl_module, [self.layer]) as acts,
        ):
            generate(sampler(1, torch.Generator().manual_seed(self.seed)))
        h, w = (int(s) for s in acts[self.layer].shape[-2:])
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

    # ------------------------------------------------------------------ logging

    def _scalars(self, entry: dict[str, Any]) -> dict[str, float]:
        scalars: dict[str, float] = {}
        for concept, numbers in entry["concepts"].items():
            if numbers is None:
                continue
            prefix = f"intervention/{concept}"
            curve = numbers["removal"]
            for n in self.log_points:
                if n > len(curve["removed"]):
                    continue
                scalars[f"{prefix}/removed_at_n{n}"] = curve["removed"][n - 1]
                if curve["random_mean"]:
                    scalars[f"{prefix}/random_removed_at_n{n}"] = curve["random_mean"][n - 1]
                if "alpha_removal" in numbers:
                    alpha_removed = numbers["alpha_removal"]["removed"]
                    scalars[f"{prefix}/alpha_removed_at_n{n}"] = alpha_removed[n - 1]
            scalars[f"{prefix}/ace"] = numbers["ace"]["ace"]
            insertion = numbers["insertion"]
            if insertion is None:
                continue
            scalars[f"{prefix}/inserted_fraction"] = insertion["fraction_gained"]
            if insertion["random_fraction_gained"]:
                random_gain = insertion["random_fraction_gained"]
                scalars[f"{prefix}/random_inserted_fraction"] = sum(random_gain) / len(random_gain)
        return scalars

    def _write(self, trainer: pl.Trainer, entry: dict[str, Any], images: dict[str, Tensor]) -> None:
        from gan_dissect_callbacks.reporting.writing import write_atomically

        step = int(entry["step"])
        folder = analysis_dir(trainer, "intervention")
        text = json.dumps({"format": "gan_dissect_callbacks.intervention/1", **entry}, indent=1)
        write_atomically(folder / f"step_{step:07d}.json", text)
        write_atomically(folder / "latest.json", text)

        scalars = self._scalars(entry)
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_metrics(scalars, step=step)
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        from gan_dissect_callbacks.reporting.charts import figure_to_image

        charts = {
            concept: figure_to_image(_removal_chart(concept, numbers, self.layer))
            for concept, numbers in entry["concepts"].items()
            if numbers is not None
        }
        for writer in writers:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=step)
            for concept, chart in charts.items():
                writer.add_image(f"intervention/{concept}/removal_curve", chart, global_step=step)
            for concept, grid in images.items():
                writer.add_image(f"intervention/{concept}/images", grid, global_step=step)
            writer.flush()


def _removal_chart(concept: str, numbers: dict[str, Any], layer: str) -> Any:
    """The removal curves of one concept: the IoU ranking, random units, the α ranking."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0, 3.0), dpi=80)
    ax = fig.add_subplot()
    curve = numbers["removal"]
    ns = list(range(len(curve["removed"]) + 1))
    ax.plot(ns, [0.0, *curve["removed"]], marker="o", label="top units (IoU)")
    if "alpha_removal" in numbers:
        ax.plot(ns, [0.0, *numbers["alpha_removal"]["removed"]], marker="s", label="top units (α)")
    if curve["random_mean"]:
        ax.plot(ns, [0.0, *curve["random_mean"]], linestyle="--", color="grey", label="random")
    ax.set_xlabel("units ablated")
    ax.set_ylabel(f"share of {concept} pixels removed")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{layer}: {concept}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
