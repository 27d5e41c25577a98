"""The dissection engine: which units of which layers match which concepts.

:func:`dissect` samples seeded latents, runs each batch once through the generator (capturing
every requested layer in the same pass) and once through the segmenter, streams activations and
masks into one :class:`~gan_dissect_callbacks.metrics.unit_concept_iou.UnitConceptIoU` per layer,
keeps each unit's top-k activating samples, and returns a :class:`DissectionReport`. It needs no
Lightning, so it also dissects a saved checkpoint post hoc; the callbacks call it at their cadence.

Under ``torch.distributed`` each process takes every ``world_size``-th sample; the count states
are summed and the top-k lists merged, so every process gets the single-process result.

The phases live side by side in this package: :mod:`.calibration` (the candidate levels, and the
distributed path where every process draws the first samples), :mod:`.streaming` (per-batch
accumulation and the top-k merge), :mod:`.report` (what is returned) and :mod:`.examples` (the
gallery units' images, handed over with the report).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from gan_dissect_callbacks.arguments import (
    THRESHOLD_RULES,
    ThresholdRule,
    check_choice,
    check_fraction,
    check_int,
    check_layer_names,
)
from gan_dissect_callbacks.engines.dissection.calibration import calibrate_on_first_samples
from gan_dissect_callbacks.engines.dissection.examples import unit_examples
from gan_dissect_callbacks.engines.dissection.report import (
    DEFAULT_IQR_CUTOFF,
    DissectionReport,
    LayerReport,
    UnitExamples,
    UnitReport,
    layer_report,
)
from gan_dissect_callbacks.engines.dissection.streaming import (
    LayerStream,
    StreamFactory,
    merge_topk,
)
from gan_dissect_callbacks.engines.distributed import agree_on_failure, dist_info
from gan_dissect_callbacks.engines.generator import AnalysedGenerator, GeneratorLike
from gan_dissect_callbacks.engines.passes import PassBatch, SampleConsumer, run_sample_pass
from gan_dissect_callbacks.segmenters.base import Segmenter, check_images

__all__ = [
    "DissectionReport",
    "DissectionSamples",
    "LayerReport",
    "ThresholdRule",
    "UnitExamples",
    "UnitReport",
    "dissect",
]

# The benchmarks profile the top-k merge by this name.
_merge_topk = merge_topk


def dissect(
    generator: GeneratorLike,
    layers: Sequence[str],
    segmenter: Segmenter,
    *,
    num_samples: int = 512,
    batch_size: int = 64,
    seed: int = 0,
    rule: ThresholdRule = "quantile",
    quantile: float = 0.99,
    iou_cutoff: float = 0.04,
    iqr_cutoff: float = DEFAULT_IQR_CUTOFF,
    top_k: int = 8,
    top_n: int = 0,
    metric_kwargs: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    step: int | None = None,
    samples: DissectionSamples | None = None,
) -> DissectionReport:
    """Dissect ``layers`` of a generator: the best concept, IoU and threshold of every unit.

    Args:
        generator: an :class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator`, or a
            module to wrap (e.g. a LightningModule: layers ``"generator.layer3"``).
        layers: dotted layer names whose outputs are ``[B, U, h, w]`` featuremaps.
        segmenter: gives concept masks of the generated images (see
            :class:`~gan_dissect_callbacks.segmenters.base.Segmenter`).
        num_samples: how many generated images to dissect (split across processes).
        batch_size: images per forward pass.
        seed: seed of the analysis's own latent generator (the global RNG is untouched).
        rule: threshold rule used for the labels: ``"quantile"`` (top ``1 - quantile`` of
            each unit's activations) or ``"iqr"`` (the paper's IQR-maximising threshold).
        quantile: the quantile of the quantile rule.
        iou_cutoff: a unit is interpretable when its best IoU exceeds this...
        iqr_cutoff: ... and, under ``rule="iqr"``, when the information quality ratio of its
            mask with that concept exceeds this (the 2019 code: IoU > 0.05 and IQR > 0.01).
        top_k: how many top-activating samples to keep per unit.
        top_n: per layer, how many of its best units (interpretable first, then by IoU) get
            their top samples redrawn as :class:`UnitExamples` in ``report.examples`` (the
            gallery's rows); 0: none.
        metric_kwargs: extra arguments of :class:`UnitConceptIoU` (e.g. ``num_levels``).
        progress: called as ``progress(done, total)`` after each batch.
        step: the training step to stamp on the report.
        samples: the dissection's pass, already run by
            :func:`~gan_dissect_callbacks.engines.passes.run_sample_pass` beside other
            analyses (made with the same arguments as this call); ``None``: run it here.

    Returns:
        A :class:`DissectionReport`.

    The generator is put in eval mode for the pass and every submodule's mode is restored; no
    gradients are computed; the global RNG streams are not advanced.
    """
    g = AnalysedGenerator.wrap(generator)
    layers = g.check_layers(check_layer_names(layers))
    check_choice(rule, "rule", THRESHOLD_RULES)
    quantile = check_fraction(quantile, "quantile")
    iou_cutoff = check_fraction(iou_cutoff, "iou_cutoff", closed_low=True)
    iqr_cutoff = check_fraction(iqr_cutoff, "iqr_cutoff", closed_low=True)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    top_k = check_int(top_k, "top_k", minimum=0)
    top_n = check_int(top_n, "top_n", minimum=0)
    world = dist_info()[1]
    if num_samples < world:
        raise ValueError(
            f"Expected argument `num_samples` to be at least the world size ({world}) so that "
            f"every process gets samples, but got {num_samples}."
        )
    vocabulary = segmenter.vocabulary
    settings = DissectionSamples(
        layers, segmenter, num_samples=num_samples, batch_size=batch_size, seed=seed,
        quantile=quantile, top_k=top_k, metric_kwargs=metric_kwargs, progress=progress,
    )  # fmt: skip
    if samples is None:
        samples = settings
        # Streaming holds no collective (the levels are set in `begin` under DDP); every
        # process learns after it whether any one failed, so the merges below see all or none.
        with agree_on_failure("the dissection"):
            run_sample_pass(g, [samples])
            samples.raise_error()
    else:
        samples.check_made_like(settings, "dissect()")
        samples.raise_error()
    streams = samples.streams
    if samples.lowest >= 0.0 and dist_info()[0] == 0:
        warnings.warn(
            f"Every image of the dissection stayed in [0, 1] (lowest value {samples.lowest:.3g}), "
            "but images are expected in [-1, 1]: the segmenter sees them too bright. If the "
            "generator outputs [0, 1], pass `generate=lambda z: g(z) * 2 - 1`.",
            stacklevel=2,
        )

    results = {name: streams[name].compute() for name in layers}
    fraction = results[layers[-1]].concept_fraction.tolist()
    _warn_of_absent_concepts(fraction, vocabulary.names, num_samples)
    found = {
        name: layer_report(
            name,
            results[name],
            vocabulary,
            rule=rule,
            iou_cutoff=iou_cutoff,
            iqr_cutoff=iqr_cutoff,
            top=streams[name].top_samples(),
        )
        for name in layers
    }
    report = DissectionReport(
        layers=found,
        vocabulary=vocabulary,
        num_samples=num_samples,
        seed=seed,
        rule=rule,
        quantile=quantile,
        iou_cutoff=iou_cutoff,
        iqr_cutoff=iqr_cutoff,
        concept_fraction=fraction,
        step=step,
    )
    if not (top_n and top_k):
        return report
    # A harmless pass of its own, so the pictures are those a later redraw would give.
    with g.harmless():
        examples = unit_examples(g, report, batch_size=batch_size, top_n=top_n)
    return replace(report, examples=examples)


class DissectionSamples(SampleConsumer):
    """The pass of a dissection: every layer's stream, fed from a (possibly shared) pass.

    :func:`dissect` makes one and runs it alone, unless it is given one that already ran beside
    other analyses (see :mod:`~gan_dissect_callbacks.engines.passes`). Under
    ``torch.distributed`` each process takes its share of the samples, and :meth:`begin`
    calibrates every layer's levels on the first samples together (collectives), so a shared
    pass may only hold consumers that every process runs alike.

    Args:
        layers: the dissected layers.
        segmenter: gives the concept masks.
        num_samples, batch_size, seed, quantile, top_k, metric_kwargs: as in :func:`dissect`.
        progress: called as ``progress(done, total)`` after each batch.

    Example:
        >>> from gan_dissect_callbacks.demos.gan import SceneGenerator
        >>> from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
        >>> from gan_dissect_callbacks.engines.passes import run_sample_pass
        >>> gan, segmenter = SceneGenerator(image_size=16), load_toy_segmenter()
        >>> samples = DissectionSamples(["layer2"], segmenter, num_samples=8, batch_size=4)
        >>> run_sample_pass(AnalysedGenerator(gan), [samples])
        >>> report = dissect(gan, ["layer2"], segmenter, num_samples=8, batch_size=4,
        ...                  samples=samples)
        >>> report.num_samples, samples.streams["layer2"].metric.num_units
        (8, 32)
    """

    def __init__(
        self,
        layers: Sequence[str],
        segmenter: Segmenter,
        *,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        quantile: float = 0.99,
        top_k: int = 8,
        metric_kwargs: dict[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__(
            num_samples, batch_size, seed=seed, layers=layers, segmenter=segmenter, split=True
        )
        self.segmenter: Segmenter = segmenter
        self.quantile = quantile
        self.top_k = top_k
        self.metric_kwargs = dict(metric_kwargs or {})
        self.progress = progress
        self.new_stream: StreamFactory = partial(
            LayerStream,
            num_concepts=len(segmenter.vocabulary),
            quantile=quantile,
            top_k=top_k,
            metric_kwargs=self.metric_kwargs,
        )
        #: ``{layer: LayerStream}``, filled by the pass.
        self.streams: dict[str, LayerStream] = {}
        #: The lowest image value seen (a dissection of [0, 1] images gets a warning).
        self.lowest = float("inf")
        self._done = 0

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "segmenter": self.segmenter,
            "quantile": self.quantile,
            "top_k": self.top_k,
            "metric_kwargs": self.metric_kwargs,
        }

    def begin(self, g: AnalysedGenerator) -> None:
        if dist_info()[1] > 1:
            self.streams = calibrate_on_first_samples(
                g, self.layers, self.segmenter, self.new_stream, num_samples=self.num_samples,
                batch_size=self.batch_size, seed=self.seed, metric_kwargs=self.metric_kwargs,
            )  # fmt: skip

    def add(self, batch: PassBatch) -> None:
        self.lowest = min(self.lowest, check_images(batch.images)[0])
        masks = batch.masks_of(self.segmenter)
        for name in self.layers:
            r = batch.activations[name]
            if name not in self.streams:
                self.streams[name] = self.new_stream(name, r, masks)
            self.streams[name].update(r, masks, batch.indices)
        self._done += len(batch.indices)
        if self.progress is not None:
            self.progress(self._done * dist_info()[1], self.num_samples)


def _warn_of_absent_concepts(fraction: list[float], names: Sequence[str], num_samples: int) -> None:
    absent = [name for name, f in zip(names, fraction, strict=True) if f == 0]
    if absent and dist_info()[0] == 0:
        warnings.warn(
            f"Concept(s) {', '.join(absent)} never occur in the {num_samples} dissected samples, "
            "so every unit's IoU with them is 0. The generator does not draw them (yet), or the "
            "segmenter never finds them in its images; draw more samples to be sure.",
            stacklevel=3,
        )
