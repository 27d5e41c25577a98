"""The calibration phase of a dissection: where each layer's metric gets its candidate levels.

A single process calibrates the candidate threshold levels of
:class:`~gan_dissect_callbacks.metrics.unit_concept_iou.UnitConceptIoU` on the batches it has
buffered first (all of them, once at least ``calibration_samples`` are waiting). Under
``torch.distributed`` each process holds only a share of those batches, so
:func:`calibrate_on_first_samples` has every process draw all of them and calibrate on them:
the levels, and so every count, are then exactly the single-process ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gan_dissect_callbacks.engines.dissection.streaming import LayerStream, StreamFactory
from gan_dissect_callbacks.engines.distributed import agree_on_failure
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.metrics.unit_concept_iou import DEFAULT_CALIBRATION_SAMPLES
from gan_dissect_callbacks.segmenters.base import Segmenter, checked_segment

__all__ = ["calibrate_on_first_samples", "calibration_size"]


def calibration_size(
    num_samples: int, batch_size: int, metric_kwargs: Mapping[str, Any] | None = None
) -> int:
    """How many first samples a single process calibrates on: whole batches, ≤ ``num_samples``.

    Example:
        >>> calibration_size(512, 48), calibration_size(100, 64), calibration_size(512, 64, {"calibration_samples": 10})
        (144, 100, 64)
    """  # noqa: E501
    wanted = int((metric_kwargs or {}).get("calibration_samples", DEFAULT_CALIBRATION_SAMPLES))
    return min(num_samples, -(-wanted // batch_size) * batch_size)


def calibrate_on_first_samples(
    g: AnalysedGenerator,
    layers: Sequence[str],
    segmenter: Segmenter,
    new_stream: StreamFactory,
    *,
    num_samples: int,
    batch_size: int,
    seed: int,
    metric_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, LayerStream]:
    """Every layer's stream, calibrated on the samples one process would calibrate on.

    Draws the first :func:`calibration_size` samples of the dissection (the same latents,
    chunked as :meth:`AnalysedGenerator.samples` chunks them), runs them through the generator
    and the segmenter, and calibrates each layer's metric on their featuremaps. Run it inside
    ``g.harmless()``.

    Returns:
        ``{layer: LayerStream}``, calibrated and still empty.
    """
    count = calibration_size(num_samples, batch_size, metric_kwargs)
    streams: dict[str, LayerStream] = {}
    chunks: dict[str, list[Tensor]] = {name: [] for name in layers}
    # Drawing holds no collective, calibrating does (the levels are broadcast from rank 0): every
    # process learns whether any one failed to draw before it enters the broadcast. A failure
    # while rank 0 computes the levels reaches every rank through the metric itself.
    with agree_on_failure("the dissection"):
        first = g.latents_for(range(count), num_samples, batch_size, seed=seed)
        for start in range(0, count, batch_size):
            images, acts = g.run(first[start : start + batch_size], capture=layers)
            masks = checked_segment(segmenter, images)
            for name in layers:
                if name not in streams:
                    streams[name] = new_stream(name, acts[name], masks)
                chunks[name].append(acts[name].float())
        calibration = {name: torch.cat(chunks.pop(name)) for name in layers}
    for name in layers:
        streams[name].metric.calibrate(calibration.pop(name))
    return streams
