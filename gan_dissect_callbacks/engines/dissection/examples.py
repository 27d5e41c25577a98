"""The example images of a dissection: each gallery unit's top samples and where it fires on them.

A report stores, per unit, only the global indices of its top-activating samples. For the
``top_n`` units of each layer that a gallery shows (:meth:`LayerReport.best_units`: interpretable
first, then by IoU), :func:`unit_examples` redraws those samples from the report's seed (the
same latents, :meth:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator.latents_for`),
runs them through the generator in batches of ``batch_size`` while capturing the layer, and
thresholds each unit's upsampled featuremap at the unit's threshold, so views need no model.
"""

from __future__ import annotations

import torch

from gan_dissect_callbacks.engines.dissection.report import (
    DissectionReport,
    LayerReport,
    UnitExamples,
)
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.functional.upsample import upsample_activations

__all__ = ["layer_examples", "unit_examples"]


def layer_examples(
    g: AnalysedGenerator,
    layer: LayerReport,
    *,
    num_samples: int,
    seed: int,
    batch_size: int,
    top_n: int,
) -> list[UnitExamples]:
    """The :class:`UnitExamples` of ``layer``'s ``top_n`` best units (empty if none has samples).

    Run it inside ``g.harmless()``.
    """
    chosen = layer.best_units(top_n)
    indices = sorted({i for u in chosen for i in u.top_samples})
    if not indices:
        return []
    position = {i: p for p, i in enumerate(indices)}
    latents = g.latents_for(indices, num_samples, batch_size, seed=seed)
    images_list, acts_list = [], []
    for start in range(0, len(indices), batch_size):
        images, acts = g.run(latents[start : start + batch_size], capture=[layer.layer])
        images_list.append(images.float())
        acts_list.append(acts[layer.layer].float())
    images = torch.cat(images_list)
    featuremaps = torch.cat(acts_list)
    examples = []
    for u in chosen:
        pick = torch.tensor([position[i] for i in u.top_samples], device=featuremaps.device)
        r = featuremaps[pick, u.unit : u.unit + 1]
        masks = upsample_activations(r, tuple(images.shape[-2:]))[:, 0] > u.threshold
        examples.append(UnitExamples(u.unit, images[pick].cpu(), masks.cpu()))
    return examples


def unit_examples(
    g: AnalysedGenerator, report: DissectionReport, *, batch_size: int, top_n: int
) -> dict[str, list[UnitExamples]]:
    """Per layer of ``report``, its ``top_n`` best units' examples (layers without any left out).

    Run it inside ``g.harmless()``.
    """
    examples = {}
    for name, layer in report.layers.items():
        found = layer_examples(
            g, layer, num_samples=report.num_samples, seed=report.seed, batch_size=batch_size,
            top_n=top_n,
        )  # fmt: skip
        if found:
            examples[name] = found
    return examples
