"""The insertion value k: what an inserted unit is set to.

Insertion sets a unit to one constant k at the edited pixels. The original's choice is the
unit's mean activation where the concept is (:func:`concept_weighted_mean`); a high quantile
of the unit's activations is the alternative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dissect_callbacks.arguments import (
    VALUE_RULES,
    ValueRule,
    check_choice,
    check_fraction,
    check_int,
)
from gan_dissect_callbacks.engines.generator import GeneratorLike
from gan_dissect_callbacks.engines.intervention._prepared import (
    Originals,
    PreparedAnalysis,
    check_values,
    prepared,
)
from gan_dissect_callbacks.engines.intervention.results import absent_error
from gan_dissect_callbacks.functional.threshold import quantile_levels
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = ["concept_weighted_mean", "insertion_values"]


def concept_weighted_mean(activations: Tensor, masks: Tensor) -> Tensor:
    """Each unit's mean activation weighted by where a concept is: the insertion value k.

    The concept mask is average-pooled to the featuremap resolution, so a featuremap pixel
    weighs as much as the share of its image pixels that belong to the concept.

    Args:
        activations: featuremaps ``[B, U, h, w]``.
        masks: one concept's masks ``[B, S, S']`` (bool, or float weights in ``[0, 1]``).

    Returns:
        ``[U]`` float64: ``Σ r_u · m↓ / Σ m↓``; NaN where the concept is absent from every image.

    Example:
        >>> import torch
        >>> r = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])  # B=1, U=2, 1x2 pixels
        >>> m = torch.tensor([[[True, True, False, False]]])  # the left half of a 1x4 image
        >>> concept_weighted_mean(r, m).tolist()
        [1.0, 2.0]
    """
    sums, weight = _weighted_sums(activations, masks)
    return sums / weight


def _weighted_sums(activations: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if activations.ndim != 4:
        raise ValueError(
            f"Expected `activations` of shape [B, U, h, w], but got {list(activations.shape)}."
        )
    if masks.ndim != 3 or masks.shape[0] != activations.shape[0]:
        raise ValueError(
            f"Expected `masks` of shape [B={activations.shape[0]}, S, S'], but got "
            f"{list(masks.shape)}."
        )
    pooled = F.adaptive_avg_pool2d(
        masks.float().unsqueeze(1), (int(activations.shape[-2]), int(activations.shape[-1]))
    )[:, 0]
    pooled = pooled.double()
    sums = torch.einsum("buhw,bhw->u", activations.double(), pooled)
    return sums, pooled.sum()


def insertion_values(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    *,
    rule: ValueRule = "concept_mean",
    quantile: float = 0.99,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
) -> Tensor:
    """The insertion value k of every unit of ``layer`` for ``concept``.

    Args:
        generator: the generator under analysis (an
            :class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator`, or a module
            whose layers are named, e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        concept: the concept, a name of the segmenter's vocabulary.
        rule: ``"concept_mean"``: each unit's mean activation weighted by the concept mask pooled
            to the featuremap (the original's choice, see :func:`concept_weighted_mean`);
            ``"quantile"``: each unit's ``quantile`` over all featuremap pixels and samples
            (holds ``num_samples·h·w`` values per unit in memory).
        quantile: the quantile of the quantile rule.
        num_samples: latents drawn (the same on every process).
        batch_size: images per forward pass.
        seed: seed of the latents.

    Returns:
        ``[U]`` float32 on the CPU.

    Raises:
        ValueError: unknown layer or concept, bad ``rule`` or ``quantile``.
        ConceptAbsentError: (concept-mean rule) the concept is absent from all samples.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())  # unit c paints channel c
        >>> net.latent_dim = 12
        >>> seg = GroundTruthSegmenter(ConceptVocabulary.from_pairs([("lit", "color")]),
        ...                            lambda x: x[:, :1] > 0)
        >>> k = insertion_values(net, "0", seg, "lit", num_samples=16)
        >>> bool(k[0] > 0)  # the unit's mean where its pixel is lit
        True
    """
    check_choice(rule, "rule", VALUE_RULES)
    quantile = check_fraction(quantile, "quantile")
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    with prepared(generator, layer, segmenter, concept, seed=seed) as s:
        return unit_values(s, rule, float(quantile), num_samples, batch_size, seed)


def unit_values(
    s: PreparedAnalysis, rule: str, quantile: float, num_samples: int, batch_size: int, seed: int
) -> Tensor:
    """k of every unit of a prepared analysis: ``[U]`` float32 on the CPU."""
    sums = torch.zeros(s.num_units, dtype=torch.float64)
    weight = torch.zeros((), dtype=torch.float64)
    values: list[Tensor] = []
    with torch.no_grad():
        for batch in s.generator.samples(num_samples, batch_size, seed=seed):
            images, acts = s.generator.run(batch.latents, capture=[s.layer])
            r = acts[s.layer].float()
            if rule == "quantile":
                values.append(r.transpose(0, 1).reshape(s.num_units, -1).cpu())
                continue
            masks = s.concept_scores(images)
            batch_sums, batch_weight = _weighted_sums(r, masks)
            sums += batch_sums.cpu()
            weight += batch_weight.cpu()
    if rule == "quantile":
        levels = quantile_levels(torch.cat(values, 1), torch.tensor([quantile]))
        return levels[:, 0].float()
    if weight.item() == 0:
        raise absent_error(s.concept, num_samples, "its concept-weighted insertion value")
    return (sums / weight).float()


def concept_mean_values(
    s: PreparedAnalysis,
    channels: Sequence[int],
    originals: Originals,
    num_samples: int,
    batch_size: int,
    seed: int,
) -> list[Tensor | None]:
    """The concept-weighted k of every unit for several concepts, from one pass over the samples.

    Per channel, what :func:`unit_values` gives for its concept (``[U]`` float32 on the CPU), or
    ``None`` where the concept is absent from all samples.
    """
    sums = torch.zeros(len(channels), s.num_units, dtype=torch.float64)
    weight = torch.zeros(len(channels), dtype=torch.float64)
    with torch.no_grad():
        for batch in s.generator.samples(num_samples, batch_size, seed=seed):
            segmentation, featuremap = originals.of(batch)
            r = featuremap.float()
            for j, channel in enumerate(channels):
                batch_sums, batch_weight = _weighted_sums(r, segmentation[:, channel].float())
                sums[j] += batch_sums.cpu()
                weight[j] += batch_weight.cpu()
    return [
        None if w.item() == 0 else (row / w).float() for row, w in zip(sums, weight, strict=True)
    ]


def resolve_values(
    s: PreparedAnalysis,
    units: Tensor,
    values: float | Sequence[float] | Tensor | None,
    num_samples: int,
    batch_size: int,
    seed: int,
) -> tuple[Tensor, Tensor | None]:
    """(k of the listed units, k of every unit when computed), float64.

    Given ``values`` are checked; ``None`` computes every unit's concept-weighted k.
    """
    if values is not None:
        return check_values(values, units.numel(), "values"), None
    every = unit_values(s, "concept_mean", 0.99, num_samples, batch_size, seed).double()
    return every[units], every
