"""Write a :class:`~gan_dissect_callbacks.engines.dissection.DissectionReport` to TensorBoard.

Shared by :class:`~gan_dissect_callbacks.callbacks.dissection.DissectionCallback` (during
training) and the ``gan-dissect`` command (post hoc), so both produce the same views:

* :func:`summarise` turns a report into the numbers that are plotted over training (and the
  unit labels needed for label stability at the next dissection);
* :func:`unit_galleries` redraws each layer's best units' top-activating samples;
* :func:`log_dissection` writes scalars, histograms, images and text to one ``SummaryWriter``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gan_dissect_callbacks.engines.dissection import DissectionReport
from gan_dissect_callbacks.engines.sampling import LatentSampler, latents_for, rng_isolated
from gan_dissect_callbacks.functional.upsample import upsample_activations
from gan_dissect_callbacks.instrumentation import capture_activations, eval_mode
from gan_dissect_callbacks.reporting.charts import category_chart, figure_to_image
from gan_dissect_callbacks.reporting.galleries import GalleryRow, unit_gallery
from gan_dissect_callbacks.reporting.layouts import (
    custom_scalars_layout,
    label_stability,
    layer_scalar_tags,
)
from gan_dissect_callbacks.reporting.tables import units_markdown

__all__ = ["log_dissection", "scalar_values", "summarise", "unit_galleries"]


def summarise(
    report: DissectionReport, previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The per-layer numbers plotted over training, and the unit labels.

    Args:
        report: a dissection.
        previous: the summary of the previous dissection (for label stability), if any.

    Returns:
        ``{"step", "layers": {layer: {"interpretable_units": {category: n}, "total",
        "distinct_concepts", "label_stability" (None for the first), "mean_best_iou",
        "labels"}}}`` — plain values only, so it can live in a checkpoint.
    """
    before = previous["layers"] if previous else {}
    categories = report.vocabulary.categories
    layers: dict[str, Any] = {}
    for name, layer in report.layers.items():
        labels = report.labels(name)
        counts = layer.counts_by_category(categories)
        prev_labels = before.get(name, {}).get("labels")
        stability = label_stability(prev_labels, labels) if prev_labels is not None else None
        best = [u.iou for u in layer.units]
        layers[name] = {
            "interpretable_units": counts,
            "total": sum(counts.values()),
            "distinct_concepts": len(layer.counts_by_concept()),
            "label_stability": stability,
            "mean_best_iou": sum(best) / len(best),
            "labels": labels,
        }
    return {"step": report.step, "layers": layers}


def scalar_values(summary: Mapping[str, Any], categories: Sequence[str]) -> dict[str, float]:
    """The scalar tags and values of a :func:`summarise` result (label stability only if known)."""
    scalars: dict[str, float] = {}
    for name, numbers in summary["layers"].items():
        tags = layer_scalar_tags(name, categories)
        for category, count in numbers["interpretable_units"].items():
            scalars[tags[f"interpretable_units/{category}"]] = float(count)
        scalars[tags["interpretable_units/total"]] = float(numbers["total"])
        scalars[tags["distinct_concepts"]] = float(numbers["distinct_concepts"])
        scalars[tags["mean_best_iou"]] = float(numbers["mean_best_iou"])
        if numbers["label_stability"] is not None:
            scalars[tags["label_stability"]] = float(numbers["label_stability"])
    return scalars


@torch.no_grad()
def unit_galleries(
    model: nn.Module,
    report: DissectionReport,
    *,
    sampler: LatentSampler,
    generate: Callable[[Tensor], Tensor],
    batch_size: int,
    num_units: int = 12,
) -> dict[str, Tensor]:
    """Per layer, a gallery of its best units (interpretable first, by IoU) and their top samples.

    The samples are redrawn from the report's seed, so the report needs only their indices. The
    pass is harmless like the dissection itself (eval mode restored, RNG forked, no gradients).
    """
    galleries: dict[str, Tensor] = {}
    if num_units <= 0:
        return galleries
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for name, layer in report.layers.items():
        chosen = sorted(layer.units, key=lambda u: (not u.interpretable, -u.iou))[:num_units]
        indices = sorted({i for u in chosen for i in u.top_samples})
        if not indices:
            continue
        position = {i: p for p, i in enumerate(indices)}
        images_list, acts_list = [], []
        with rng_isolated(device), eval_mode(model):
            latents = latents_for(
                sampler, indices, report.num_samples, batch_size, seed=report.seed
            )
            for start in range(0, len(indices), batch_size):
                with capture_activations(model, [name]) as acts:
                    images_list.append(generate(latents[start : start + batch_size]).float())
                acts_list.append(acts[name].float())
        images = torch.cat(images_list)
        featuremaps = torch.cat(acts_list)
        rows = []
        for u in chosen:
            pick = torch.tensor([position[i] for i in u.top_samples], device=featuremaps.device)
            r = featuremaps[pick, u.unit : u.unit + 1]
            masks = upsample_activations(r, tuple(images.shape[-2:]))[:, 0] > u.threshold
            iou = "" if math.isnan(u.iou) else f" IoU {u.iou:.2f}"
            label = u.concept if u.interpretable else f"({u.concept})"
            rows.append(
                GalleryRow(
                    title=f"{name} #{u.unit} {label}{iou}",
                    images=images[pick].cpu(),
                    masks=masks.cpu(),
                )
            )
        galleries[name] = unit_gallery(rows)
    return galleries


def log_dissection(
    writer: Any,
    report: DissectionReport,
    summary: Mapping[str, Any],
    *,
    galleries: Mapping[str, Tensor] | None = None,
    write_layout: bool = False,
) -> None:
    """Write one dissection to a TensorBoard ``SummaryWriter`` at step ``summary["step"]``."""
    step = int(summary["step"] or 0)
    vocabulary = report.vocabulary
    if write_layout:
        writer.add_custom_scalars(custom_scalars_layout(list(report.layers), vocabulary.categories))
    for tag, value in scalar_values(summary, vocabulary.categories).items():
        writer.add_scalar(tag, value, global_step=step)
    for name, layer in report.layers.items():
        prefix = f"dissection/{name}"
        writer.add_histogram(f"{prefix}/best_iou", torch.tensor([u.iou for u in layer.units]), step)
        writer.add_image(
            f"{prefix}/unit_classes",
            figure_to_image(category_chart(layer, vocabulary)),
            global_step=step,
        )
        writer.add_text(
            f"{prefix}/units",
            units_markdown(layer, categories=vocabulary.categories),
            global_step=step,
        )
        if galleries and name in galleries:
            writer.add_image(f"{prefix}/gallery", galleries[name], global_step=step)
    writer.flush()
