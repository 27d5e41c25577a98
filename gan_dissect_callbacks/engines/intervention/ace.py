"""The average causal effect of a set of units on a concept: insertion against ablation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import MEASURES, Measure, check_choice, check_int
from gan_dissect_callbacks.engines.distributed import all_reduce_sum, dist_info
from gan_dissect_callbacks.engines.generator import GeneratorLike
from gan_dissect_callbacks.engines.intervention._prepared import (
    PreparedAnalysis,
    chunks,
    full_vector,
    prepared,
    region_means,
    twice,
)
from gan_dissect_callbacks.engines.intervention.results import ACEResult
from gan_dissect_callbacks.engines.intervention.values import resolve_values
from gan_dissect_callbacks.instrumentation import UnitEdit
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = ["average_causal_effect"]


def average_causal_effect(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    units: Sequence[int] | Tensor,
    *,
    values: float | Sequence[float] | Tensor | None = None,
    locations: Tensor | None = None,
    measure: Measure = "region",
    soft: bool = False,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ACEResult:
    """``δ_U→c = E_z,P[s_c(x_i)] − E_z,P[s_c(x_a)]``, streamed over seeded samples.

    Every sample is edited at every location: ``2 · num_samples · L`` edited images in batches
    of ``batch_size``; memory does not grow with ``num_samples``.

    Args:
        generator: the generator under analysis (an
            :class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator`, or a module
            whose layers are named, e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        concept: the concept, a name of the segmenter's vocabulary.
        units: the units U to ablate and insert.
        values: their insertion values k, one per listed unit or one for all; by default the
            concept-weighted mean activation (:func:`insertion_values`, same samples).
        locations: the pixels P, ``[h, w]`` or ``[L, h, w]`` (bool, or float weights) at the
            featuremap resolution; ``None``: every pixel. See :func:`patch_locations`.
        measure: where ``s_c`` is measured: ``"region"`` (inside the edited P↑) or ``"image"``.
        soft: use the segmenter's probabilities instead of its hard masks (the headline numbers
            use hard masks).
        num_samples: latents drawn (split across processes).
        batch_size: images per forward pass.
        seed: seed of the latents.
        progress: called as ``progress(done, total)`` after each batch of latents.

    Returns:
        An :class:`ACEResult`.

    Raises:
        ValueError: unknown layer or concept, units out of range, an empty location P, bad
            values.
        ConceptAbsentError: (default values) the concept is absent from all samples.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())  # unit c paints channel c
        >>> net.latent_dim = 12
        >>> seg = GroundTruthSegmenter(ConceptVocabulary.from_pairs([("lit", "color")]),
        ...                            lambda x: x[:, :1] > 0)
        >>> result = average_causal_effect(net, "0", seg, "lit", [0], values=1.0, num_samples=4)
        >>> result.inserted, result.ablated, result.ace
        (1.0, 0.0, 1.0)
    """
    check_choice(measure, "measure", MEASURES)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    with prepared(generator, layer, segmenter, concept, seed=seed) as s:
        index = s.units(units)
        places = s.locations(locations)
        k, _ = resolve_values(s, index, values, num_samples, batch_size, seed)
        totals = _ace_sums(
            s, index, k, places, measure, soft, num_samples, batch_size, seed, progress
        )
    return ace_result(
        layer, concept, index, k, all_reduce_sum(totals), num_samples, int(places.shape[0]),
        measure=measure, soft=soft,
    )  # fmt: skip


def ace_result(
    layer: str,
    concept: str,
    units: Tensor,
    values: Tensor,
    totals: Tensor,
    num_samples: int,
    num_locations: int,
    *,
    measure: str,
    soft: bool,
) -> ACEResult:
    """The :class:`ACEResult` of summed ``[Σ s_c(x_i), Σ s_c(x_a), Σ s_c(x), pairs]``."""
    count = totals[3].item()
    inserted, ablated, original = (float(v) / count for v in totals[:3])
    return ACEResult(
        layer=layer,
        concept=concept,
        units=units.tolist(),
        values=values.tolist(),
        ace=inserted - ablated,
        inserted=inserted,
        ablated=ablated,
        original=original,
        num_samples=num_samples,
        num_locations=num_locations,
        measure=measure,
        soft=soft,
    )


def _ace_sums(
    s: PreparedAnalysis,
    units: Tensor,
    k: Tensor,
    places: Tensor,
    measure: str,
    soft: bool,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> Tensor:
    """``[Σ s_c(x_i), Σ s_c(x_a), Σ s_c(x), pairs]`` over this process's (sample, P) pairs."""
    device = s.device
    rank, world = dist_info()
    selected = torch.zeros(s.num_units)
    selected[units] = 1.0
    k_full = full_vector(units, k, s.num_units).float()
    where_all = places.to(device)
    regions = s.regions(places)
    if measure == "image":
        regions = torch.ones_like(regions)
    num_places = places.shape[0]
    totals = torch.zeros(4, dtype=torch.float64)
    pairs_per_pass = max(1, batch_size // 2)  # an inserted and an ablated image per pair
    done = 0
    for batch in s.generator.samples(
        num_samples, batch_size, seed=seed, rank=rank, world_size=world
    ):
        z = batch.latents
        b = z.shape[0]
        original = s.concept_scores(s.images(z), soft)  # [B, S, S']
        weighted = torch.einsum("bst,lst->bl", original, regions)
        totals[2] += (weighted / regions.sum((1, 2))).sum().double().cpu()
        place_of = torch.arange(num_places).repeat_interleave(b)
        sample_of = torch.arange(b).repeat(num_places)
        for part in chunks(place_of.numel(), pairs_per_pass):
            p, i = place_of[part], sample_of[part]
            n = p.numel()
            scores = inserted_then_ablated(s, z, i, p, selected, k_full, where_all, soft)
            means = region_means(scores, regions[p.to(device)].repeat(2, 1, 1))
            totals[0] += means[:n].sum().double().cpu()
            totals[1] += means[n:].sum().double().cpu()
        totals[3] += b * num_places
        done += b
        if progress is not None:
            progress(done * world, num_samples)
    return totals


def inserted_then_ablated(
    s: PreparedAnalysis,
    z: Tensor,
    samples: Tensor,
    places: Tensor,
    selected: Tensor,
    k_full: Tensor,
    where_all: Tensor,
    soft: bool = False,
) -> Tensor:
    """``s_c`` of each (sample, place) pair with the units inserted, then with them ablated.

    One forward pass of ``2n`` images: rows ``[:n]`` have the selected units set to ``k_full`` at
    their place P, rows ``[n:]`` set to 0 there (``[2n, S, S']``).
    """
    device = where_all.device
    n = places.numel()
    value = torch.cat([k_full.expand(n, -1), torch.zeros(n, s.num_units)])
    edit = UnitEdit(
        alpha=selected, value=value.to(device), where=where_all[places.to(device)].repeat(2, 1, 1)
    )
    return s.concept_scores(s.images(twice(z[samples.to(z.device)]), edit), soft)
