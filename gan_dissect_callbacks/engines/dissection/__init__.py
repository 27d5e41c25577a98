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
    merge_topk,
    stream_samples,
)
from gan_dissect_callbacks.engines.distributed import agree_on_failure, dist_info
from gan_dissect_callbacks.engines.generator import AnalysedGenerator, GeneratorLike
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = [
    "DissectionReport",
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
    new_stream = partial(
        LayerStream,
        num_concepts=len(vocabulary),
        quantile=quantile,
        top_k=top_k,
        metric_kwargs=metric_kwargs,
    )

    with g.harmless():
        streams: dict[str, LayerStream] = {}
        if world > 1:
            streams = calibrate_on_first_samples(
                g, layers, segmenter, new_stream, num_samples=num_samples,
                batch_size=batch_size, seed=seed, metric_kwargs=metric_kwargs,
            )  # fmt: skip
        # Streaming holds no collective (the levels are set by now under DDP); every process
        # learns after it whether any one failed, so the merges below see all or none.
        with agree_on_failure("the dissection"):
            stream_samples(
                g, layers, segmenter, streams, new_stream, num_samples=num_samples,
                batch_size=batch_size, seed=seed, progress=progress,
            )  # fmt: skip

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


def _warn_of_absent_concepts(fraction: list[float], names: Sequence[str], num_samples: int) -> None:
    absent = [name for name, f in zip(names, fraction, strict=True) if f == 0]
    if absent and dist_info()[0] == 0:
        warnings.warn(
            f"Concept(s) {', '.join(absent)} never occur in the {num_samples} dissected samples, "
            "so every unit's IoU with them is 0. The generator does not draw them (yet), or the "
            "segmenter never finds them in its images; draw more samples to be sure.",
            stacklevel=3,
        )
